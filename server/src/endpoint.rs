//! `tarn endpoint start|stop|list`: disposable computes. An endpoint is an unmodified
//! Postgres 15 booted on a branch from a basebackup the pageserver generates at the end
//! of the branch's WAL (fixed by a sync of the safekeepers in a new term, which fences
//! any earlier compute's proposer and includes every acknowledged commit), with its own
//! proposer streaming its new WAL to the safekeepers under the branch's timeline. Its data directory is never reused: every
//! start replaces it with a fresh basebackup (DESIGN.md decision 3), so the compute runs
//! with `fsync=off` and `full_page_writes=off`.
//!
//! Each endpoint lives in `D/endpoints/NAME/` (NAME is the branch): `pgdata/`,
//! `endpoint.json` (port, LSN, proposer pid) and `proposer.json` (the proposer's state).
//! Postgres runs as a daemon (`pg_ctl`) and the proposer in a session of its own, so
//! both outlive the command that started them; `tarn endpoint stop` stops them.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tarn_pages::basebackup::{DirectorySink, TarUnpacker};
use tarn_pages::service::client::{ClientError, PageserverClient};
use tarn_pages::service::protocol::{Request, Response};
use tarn_wal::{Lsn, TimelineId};

use crate::branch::{Branch, BranchError, Branches, MAIN};
use crate::layout::{self, ClusterLayout};
use crate::manifest::write_atomically;
use crate::os;
use crate::postgres::{PgBinaries, PgCluster, PostgresError, StopMode};

/// Postgres settings of every endpoint (the proposer's application name is added).
const ENDPOINT_SETTINGS: &[(&str, &str)] = &[
    ("synchronous_commit", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
];
/// How long the pageserver may take to ingest the timeline's committed WAL.
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the proposer may take to become the endpoint's synchronous standby.
const PROPOSER_READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const PAGESERVER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the sync of the safekeepers may take (an election and a commit).
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// Between SIGTERM and SIGKILL of an endpoint's proposer.
const PROPOSER_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub branch: String,
    pub timeline_id: String,
    pub port: u16,
    /// The LSN the compute was booted at.
    pub lsn: String,
    pub proposer_pid: Option<u32>,
    pub data_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Branch(#[from] BranchError),
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error("pageserver: {0}")]
    Pageserver(#[from] ClientError),
    #[error("syncing the safekeepers: {0}")]
    Sync(String),
    #[error("the pageserver refused: {0}")]
    Refused(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path} is not a valid endpoint record: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("endpoint {name} is running already (postmaster pid {pid}, port {port})")]
    Running { name: String, pid: u32, port: u16 },
    #[error(
        "branch main is served by the Postgres that `tarn up` runs (pid {pid}); stop it before starting an endpoint on main"
    )]
    MainInUse { pid: u32 },
    #[error("no endpoint on branch {name:?} (see `tarn endpoint list`)")]
    Unknown { name: String },
    #[error("timed out after {}s: {what}", timeout.as_secs())]
    Timeout { what: String, timeout: Duration },
    #[error("the proposer of endpoint {name} exited during startup; see {}", log.display())]
    ProposerExited { name: String, log: PathBuf },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> EndpointError + use<> {
    let path = path.to_path_buf();
    move |source| EndpointError::Io { what, path, source }
}

fn endpoint_dir(layout: &ClusterLayout, name: &str) -> PathBuf {
    layout.dir.join("endpoints").join(name)
}

fn record_path(layout: &ClusterLayout, name: &str) -> PathBuf {
    endpoint_dir(layout, name).join("endpoint.json")
}

fn read_record(
    layout: &ClusterLayout,
    name: &str,
) -> Result<Option<EndpointRecord>, EndpointError> {
    let path = record_path(layout, name);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EndpointError::Parse {
                path,
                detail: e.to_string(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("cannot read", &path)(e)),
    }
}

fn write_record(
    layout: &ClusterLayout,
    name: &str,
    record: &EndpointRecord,
) -> Result<(), EndpointError> {
    let path = record_path(layout, name);
    let mut bytes = serde_json::to_vec_pretty(record).map_err(|e| EndpointError::Parse {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    bytes.push(b'\n');
    write_atomically(&path, &bytes).map_err(io_error("cannot write", &path))
}

/// What `tarn endpoint start` reports.
#[derive(Clone, Debug)]
pub struct StartedEndpoint {
    pub name: String,
    pub lsn: Lsn,
    pub port: u16,
    pub connstring: String,
    /// From syncing the safekeepers (and asking for the basebackup) to Postgres
    /// accepting connections.
    pub boot: Duration,
}

/// Starts an endpoint on branch `name`, listening on `port`.
pub fn start(
    layout: &ClusterLayout,
    name: &str,
    port: u16,
) -> Result<StartedEndpoint, EndpointError> {
    let branches = Branches::open(layout)?;
    let branch = branches.get(name)?;
    let bins = PgBinaries::locate()?;
    let dir = endpoint_dir(layout, name);
    let data_dir = dir.join("pgdata");
    if let Some(record) = read_record(layout, name)?
        && data_dir.exists()
    {
        let cluster = PgCluster::open(&bins, &data_dir)?;
        if let Some(pid) = cluster.postmaster_pid() {
            return Err(EndpointError::Running {
                name: name.to_string(),
                pid,
                port: record.port,
            });
        }
    }
    if name == MAIN
        && let Some(pid) = branches
            .manifest()
            .component(layout::POSTGRES)
            .and_then(|c| c.pid)
            .filter(|pid| os::process_is_alive(*pid))
    {
        return Err(EndpointError::MainInUse { pid });
    }
    let safekeepers: Vec<SocketAddr> = branches
        .manifest()
        .safekeeper_ports
        .iter()
        .map(|port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)))
        .collect();
    let pageserver = branches.pageserver()?;

    // A previous compute of this endpoint that crashed may have left its proposer
    // running: stop it (the sync's new term would fence it anyway).
    if let Some(pid) = read_record(layout, name)?.and_then(|r| r.proposer_pid) {
        stop_process(pid);
    }
    if name == MAIN
        && let Some(pid) = branches
            .manifest()
            .component(layout::PROPOSER)
            .and_then(|c| c.pid)
    {
        // `tarn up`'s proposer of a dead main compute would otherwise campaign
        // against the new one.
        stop_process(pid);
    }
    fs::create_dir_all(&dir).map_err(io_error("cannot create", &dir))?;
    let started = Instant::now();
    let lsn = prepare_compute(
        branches.manifest().system_id,
        &safekeepers,
        pageserver,
        branch.timeline_id,
        &data_dir,
    )?;
    let mut cluster = PgCluster::open(&bins, &data_dir)?;
    let application_name = proposer_application_name(name);
    let mut settings: Vec<(&str, &str)> = ENDPOINT_SETTINGS.to_vec();
    settings.push(("synchronous_standby_names", &application_name));
    cluster.set_settings(&settings)?;
    cluster.start(port)?;
    let boot = started.elapsed();

    let logs = layout.logs_dir();
    fs::create_dir_all(&logs).map_err(io_error("cannot create", &logs))?;
    let proposer_log = layout.log_path(&format!("endpoint-{name}-proposer"));
    let proposer_pid = match spawn_proposer(
        layout,
        name,
        &branch,
        lsn,
        port,
        &safekeepers,
        &proposer_log,
    ) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = cluster.stop(StopMode::Immediate);
            return Err(e);
        }
    };
    let record = EndpointRecord {
        branch: name.to_string(),
        timeline_id: branch.timeline_id.to_string(),
        port,
        lsn: lsn.to_string(),
        proposer_pid: Some(proposer_pid),
        data_dir: data_dir.clone(),
    };
    write_record(layout, name, &record)?;
    if let Err(e) = wait_until_sync(
        &cluster,
        &application_name,
        proposer_pid,
        name,
        &proposer_log,
    ) {
        let _ = stop(layout, name);
        return Err(e);
    }
    cluster.detach();
    Ok(StartedEndpoint {
        name: name.to_string(),
        lsn,
        port,
        connstring: cluster.connstring(),
        boot,
    })
}

fn proposer_application_name(name: &str) -> String {
    format!("tarn_endpoint_{}", name.replace('-', "_"))
}

/// Makes `data_dir` a fresh data directory for a compute on `timeline`, at the end of
/// its WAL: a sync of the safekeepers (a new term, which fences any earlier proposer)
/// fixes that end to include everything a majority holds (so every commit ever
/// acknowledged), the pageserver ingests up to it, and its basebackup there replaces
/// whatever `data_dir` held. A timeline without WAL of its own (a branch no compute
/// wrote to yet) starts at its branch point. Returns the LSN the compute boots at.
pub(crate) fn prepare_compute(
    system_id: u64,
    safekeepers: &[SocketAddr],
    pageserver: SocketAddr,
    timeline: TimelineId,
    data_dir: &Path,
) -> Result<Lsn, EndpointError> {
    let end = sync_safekeepers(system_id, safekeepers, timeline)?;
    let ingested = wait_for_ingest(pageserver, timeline, end)?;
    let lsn = end.unwrap_or(ingested.max_align());
    if data_dir.exists() {
        // The old data directory is never reused (see the module docs).
        fs::remove_dir_all(data_dir).map_err(io_error("cannot remove", data_dir))?;
    }
    fetch_basebackup(pageserver, timeline, lsn, data_dir)?;
    Ok(lsn)
}

/// The end of `timeline`'s WAL after a sync, or `None` if no safekeeper holds it.
fn sync_safekeepers(
    system_id: u64,
    safekeepers: &[SocketAddr],
    timeline: TimelineId,
) -> Result<Option<Lsn>, EndpointError> {
    let config = tarn_wal::proposer::SyncConfig {
        safekeepers: safekeepers.iter().map(SocketAddr::to_string).collect(),
        timeline_id: timeline,
        system_id: tarn_wal::SystemId(system_id),
        segment_size_bytes: tarn_wal::proposer::service::POSTGRES_SEGMENT_SIZE_BYTES,
        timeout: SYNC_TIMEOUT,
    };
    match tarn_wal::proposer::sync_safekeepers(config) {
        Ok(end) => Ok(Some(end)),
        Err(tarn_wal::proposer::ProposerError::EmptyTimeline { .. }) => Ok(None),
        Err(e) => Err(EndpointError::Sync(e.to_string())),
    }
}

/// Waits until the pageserver has ingested `timeline` up to `committed`; returns its
/// ingested LSN.
fn wait_for_ingest(
    pageserver: SocketAddr,
    timeline: TimelineId,
    committed: Option<Lsn>,
) -> Result<Lsn, EndpointError> {
    let deadline = Instant::now() + INGEST_TIMEOUT;
    loop {
        let mut client = PageserverClient::connect(pageserver, PAGESERVER_TIMEOUT)?;
        let ingested = match client.call(&Request::Status { timeline })? {
            Response::Status {
                last_ingested_lsn, ..
            } => last_ingested_lsn,
            Response::Error { message, .. } => return Err(EndpointError::Refused(message)),
            other => {
                return Err(EndpointError::Refused(format!(
                    "unexpected answer {other:?}"
                )));
            }
        };
        if committed.is_none_or(|c| ingested >= c) {
            return Ok(ingested);
        }
        if Instant::now() >= deadline {
            return Err(EndpointError::Timeout {
                what: format!(
                    "the pageserver ingested timeline {timeline} up to {ingested}, the safekeepers committed up to {}",
                    committed.unwrap_or(Lsn::INVALID)
                ),
                timeout: INGEST_TIMEOUT,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Unpacks the pageserver's basebackup of `timeline` at `lsn` into `data_dir`, owned
/// by the user Postgres runs as.
fn fetch_basebackup(
    pageserver: SocketAddr,
    timeline: TimelineId,
    lsn: Lsn,
    data_dir: &Path,
) -> Result<(), EndpointError> {
    let mut sink = DirectorySink::create(data_dir).map_err(io_error("cannot create", data_dir))?;
    if let Some(user) = crate::postgres::server_user()? {
        sink = sink
            .with_owner(user.uid, user.gid)
            .map_err(io_error("cannot give to postgres", data_dir))?;
    }
    let mut unpacker = TarUnpacker::new(sink);
    let mut client = PageserverClient::connect(pageserver, PAGESERVER_TIMEOUT)?;
    match client.basebackup(timeline, lsn, &mut unpacker)? {
        Response::BasebackupDone { .. } => {}
        Response::Error { message, .. } => return Err(EndpointError::Refused(message)),
        other => {
            return Err(EndpointError::Refused(format!(
                "unexpected answer {other:?}"
            )));
        }
    }
    unpacker
        .finish()
        .map_err(io_error("cannot unpack the basebackup into", data_dir))?;
    Ok(())
}

fn spawn_proposer(
    layout: &ClusterLayout,
    name: &str,
    branch: &Branch,
    lsn: Lsn,
    port: u16,
    safekeepers: &[SocketAddr],
    log_path: &Path,
) -> Result<u32, EndpointError> {
    let exe = std::env::current_exe()
        .map_err(io_error("cannot find own executable", Path::new("tarn")))?;
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .map_err(io_error("cannot open log", log_path))?;
    let stderr = log
        .try_clone()
        .map_err(io_error("cannot open log", log_path))?;
    let safekeeper_list = safekeepers
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut command = Command::new(exe);
    command
        .arg("proposer")
        .arg("--postgres")
        .arg(format!("host=127.0.0.1 port={port} user=postgres"))
        .arg("--safekeepers")
        .arg(safekeeper_list)
        .arg("--timeline-id")
        .arg(branch.timeline_id.to_string())
        .arg("--application-name")
        .arg(proposer_application_name(name))
        .arg("--state-file")
        .arg(endpoint_dir(layout, name).join("proposer.json"))
        .arg("--timeline-start")
        .arg(lsn.to_string())
        .stdin(Stdio::null());
    let _ = writeln!(log, "--- tarn endpoint start {name}: {command:?}");
    command.stdout(log).stderr(stderr);
    // A session of its own: it outlives this command and a terminal's signals.
    command.process_group(0);
    let child = command
        .spawn()
        .map_err(io_error("cannot start the proposer for", Path::new(name)))?;
    Ok(child.id())
}

fn wait_until_sync(
    cluster: &PgCluster,
    application_name: &str,
    proposer_pid: u32,
    name: &str,
    log: &Path,
) -> Result<(), EndpointError> {
    let query = format!(
        "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{application_name}' AND state = 'streaming'"
    );
    let deadline = Instant::now() + PROPOSER_READY_TIMEOUT;
    loop {
        if !os::process_is_alive(proposer_pid) {
            return Err(EndpointError::ProposerExited {
                name: name.to_string(),
                log: log.to_path_buf(),
            });
        }
        let state = cluster.psql_with_timeout("postgres", &query, Duration::from_secs(5));
        if state.is_ok_and(|s| s.lines().any(|line| line == "sync")) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(EndpointError::Timeout {
                what: format!(
                    "the proposer of endpoint {name} did not become Postgres's synchronous standby; see {}",
                    log.display()
                ),
                timeout: PROPOSER_READY_TIMEOUT,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The postmaster pid and port of the endpoint on branch `name`, if it runs.
pub fn running_endpoint(layout: &ClusterLayout, name: &str) -> Option<(u32, u16)> {
    let record = read_record(layout, name).ok()??;
    let bins = PgBinaries::locate().ok()?;
    let cluster = PgCluster::open(&bins, &record.data_dir).ok()?;
    Some((cluster.postmaster_pid()?, record.port))
}

/// Stops the endpoint on branch `name`: Postgres first (a fast shutdown waits for the
/// proposer to acknowledge its shutdown checkpoint), then its proposer.
pub fn stop(layout: &ClusterLayout, name: &str) -> Result<(), EndpointError> {
    let mut record = read_record(layout, name)?.ok_or_else(|| EndpointError::Unknown {
        name: name.to_string(),
    })?;
    let bins = PgBinaries::locate()?;
    if record.data_dir.exists() {
        let mut cluster = PgCluster::open(&bins, &record.data_dir)?;
        if cluster.stop(StopMode::Fast).is_err() {
            cluster.stop(StopMode::Immediate)?;
        }
    }
    if let Some(pid) = record.proposer_pid.take() {
        stop_process(pid);
    }
    write_record(layout, name, &record)
}

fn stop_process(pid: u32) {
    if !os::process_is_alive(pid) {
        return;
    }
    let _ = os::send_signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + PROPOSER_STOP_GRACE;
    while os::process_is_alive(pid) && Instant::now() < deadline {
        thread::sleep(POLL_INTERVAL);
    }
    if os::process_is_alive(pid) {
        let _ = os::send_signal(pid, libc::SIGKILL);
    }
}

/// One line per endpoint.
pub fn list(layout: &ClusterLayout) -> Result<Vec<(EndpointRecord, bool)>, EndpointError> {
    let dir = layout.dir.join("endpoints");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error("cannot list", &dir)(e)),
    };
    let bins = PgBinaries::locate()?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_error("cannot list", &dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(record) = read_record(layout, &name)? {
            let running = record.data_dir.exists()
                && PgCluster::open(&bins, &record.data_dir)
                    .map(|c| c.is_running())
                    .unwrap_or(false);
            out.push((record, running));
        }
    }
    out.sort_by(|a, b| a.0.branch.cmp(&b.0.branch));
    Ok(out)
}
