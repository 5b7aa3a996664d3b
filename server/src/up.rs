//! `tarn up`: creates or reuses a cluster directory and runs a whole local cluster in
//! the foreground: 3 safekeepers, the pageserver (seeded once from a copy of the data
//! directory taken before Postgres's first start), PostgreSQL 15 configured with the
//! proposer as its synchronous standby, and the proposer, each as a child process.
//!
//! The compute is disposable (DESIGN.md, decision 3): Postgres runs with `fsync=off`
//! and `full_page_writes=off`, and its data directory is never reused. On every start
//! of an existing cluster (after a clean stop, a crash, or with `D/postgres` deleted),
//! `tarn up` syncs the safekeepers (a new term fixes the end of the WAL to include every
//! acknowledged commit), waits for the pageserver to ingest up to it, and boots a fresh
//! Postgres from the pageserver's basebackup there.
//!
//! The supervisor only watches: a component that dies is reported, never restarted
//! (operators and tests restart components explicitly, from the command line recorded
//! in `tarn.json`). SIGINT or SIGTERM stops the cluster in dependency order: Postgres
//! first (its fast shutdown waits for the proposer to acknowledge the shutdown
//! checkpoint), then the proposer, then the safekeepers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tarn_wal::TimelineId;

use crate::command;
use crate::layout::{self, ClusterLayout, SAFEKEEPER_COUNT};
use crate::manifest::{self, ClusterManifest, ComponentRecord, ManifestError};
use crate::os;
use crate::ports;
use crate::postgres::{LISTEN_HOST, PgBinaries, PgCluster, PostgresError, SUPERUSER, StopMode};

/// Postgres's port when `--port` is not given; safekeepers take the next three.
pub const DEFAULT_POSTGRES_PORT: u16 = 55432;
/// The proposer's `application_name`, named in `synchronous_standby_names`.
pub const PROPOSER_APPLICATION_NAME: &str = "tarn_proposer";

/// Postgres settings for running under tarn. `wal_keep_size` keeps enough WAL for a
/// restarting proposer to re-read what the quorum has not committed yet. `fsync` and
/// `full_page_writes` are off: durability is the quorum's, and a compute's data
/// directory is never reused after it stops (DESIGN.md, decision 3).
pub const POSTGRES_SETTINGS: &[(&str, &str)] = &[
    ("synchronous_standby_names", PROPOSER_APPLICATION_NAME),
    ("synchronous_commit", "on"),
    ("wal_level", "replica"),
    ("max_wal_senders", "10"),
    ("wal_keep_size", "1GB"),
    ("fsync", "off"),
    ("full_page_writes", "off"),
];

/// How long a safekeeper may take to start listening.
const SAFEKEEPER_LISTEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the proposer may take to become Postgres's synchronous standby (connect,
/// win an election among the safekeepers, start streaming).
const PROPOSER_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on each psql probe of `pg_stat_replication` during startup.
const READINESS_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between startup readiness checks.
const STARTUP_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Interval between checks on running children.
const SUPERVISE_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// A fast Postgres shutdown waits for the standby to confirm the shutdown checkpoint;
/// past this it is stopped in immediate mode.
const POSTGRES_FAST_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a proposer or safekeeper gets between SIGTERM and SIGKILL.
const COMPONENT_STOP_GRACE: Duration = Duration::from_secs(10);

/// What `tarn up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The cluster directory (created on first run).
    pub dir: PathBuf,
    pub postgres_port: u16,
    pub safekeeper_ports: [u16; SAFEKEEPER_COUNT],
    pub pageserver_port: u16,
}

/// The pageserver's port when not given: Postgres's port + 4 (after the safekeepers).
pub fn default_pageserver_port(postgres_port: u16) -> Option<u16> {
    postgres_port.checked_add(SAFEKEEPER_COUNT as u16 + 1)
}

/// What the pageserver needs to know about its base copy (`D/pageserver/base.json`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct BaseInfo {
    /// The checkpoint the copy was cleanly shut down at (see [`take_base_copy`]).
    lsn: String,
    data_checksums: bool,
    wal_log_hints: bool,
}

/// `[P+1, P+2, P+3]`, or `None` if that passes 65535.
pub fn default_safekeeper_ports(postgres_port: u16) -> Option<[u16; SAFEKEEPER_COUNT]> {
    let mut ports = [0; SAFEKEEPER_COUNT];
    for (offset, port) in (1u16..).zip(ports.iter_mut()) {
        *port = postgres_port.checked_add(offset)?;
    }
    Some(ports)
}

/// Checks that the ports are non-zero and pairwise distinct; the message names the
/// offending port.
pub fn validate_ports(
    postgres_port: u16,
    safekeeper_ports: &[u16; SAFEKEEPER_COUNT],
    pageserver_port: u16,
) -> Result<(), String> {
    let all: Vec<u16> = std::iter::once(postgres_port)
        .chain(safekeeper_ports.iter().copied())
        .chain(std::iter::once(pageserver_port))
        .collect();
    for (index, port) in all.iter().enumerate() {
        if *port == 0 {
            return Err("port 0 is not allowed: pick fixed ports".to_string());
        }
        if all[..index].contains(port) {
            return Err(format!("port {port} is given to two components"));
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Postgres(#[from] PostgresError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    InvalidPorts(String),
    #[error("port {port} ({component}) is in use")]
    PortInUse { port: u16, component: String },
    #[error("cannot check whether port {port} is free: {source}")]
    PortCheck { port: u16, source: io::Error },
    #[error("another `tarn up` is already running with --dir {}", dir.display())]
    AlreadyRunning { dir: PathBuf },
    #[error(
        "data directory {} belongs to another cluster (system id {found}, expected {expected})",
        dir.display()
    )]
    ForeignDataDirectory {
        dir: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error(
        "{} exists but {} does not: an earlier `tarn up` stopped while creating the cluster; remove {} to start over",
        data_dir.display(),
        manifest.display(),
        dir.display()
    )]
    HalfCreated {
        dir: PathBuf,
        data_dir: PathBuf,
        manifest: PathBuf,
    },
    #[error("Postgres from an earlier run is still running in {} (pid {pid}); stop it with: {stop_command}", data_dir.display())]
    StalePostgres {
        data_dir: PathBuf,
        pid: u32,
        stop_command: String,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot start {component} ({}): {source}", argv.join(" "))]
    Spawn {
        component: String,
        argv: Vec<String>,
        source: io::Error,
    },
    #[error("{component} exited during startup ({status}); see {}", log.display())]
    ExitedDuringStartup {
        component: String,
        status: ExitStatus,
        log: PathBuf,
    },
    #[error("{component} did not start listening on {addr} within {} s; see {}", timeout.as_secs(), log.display())]
    NotListening {
        component: String,
        addr: SocketAddrV4,
        timeout: Duration,
        log: PathBuf,
    },
    #[error(
        "the proposer did not become Postgres's synchronous standby within {} s; see {}",
        timeout.as_secs(),
        log.display()
    )]
    ProposerNotReady { timeout: Duration, log: PathBuf },
    #[error(
        "{} records a cluster created before tarn ran a pageserver: its compute cannot be rebuilt; start over in a new directory",
        manifest.display()
    )]
    NoPageserver { manifest: PathBuf },
    #[error(
        "an endpoint on branch main is running (postmaster pid {pid}, port {port}); stop it first: tarn endpoint stop main"
    )]
    MainEndpointRunning { pid: u32, port: u16 },
    #[error("rebuilding the compute from the pageserver: {0}")]
    Recovery(#[from] crate::endpoint::EndpointError),
    #[error("cannot prepare the pageserver's base copy: {0}")]
    BaseCopy(String),
    #[error("interrupted during startup")]
    Interrupted,
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> UpError + 'a {
    move |source| UpError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs `tarn up` until SIGINT or SIGTERM, then stops the cluster. Returns once every
/// component it started has stopped.
pub fn run(options: UpOptions) -> Result<(), UpError> {
    validate_ports(
        options.postgres_port,
        &options.safekeeper_ports,
        options.pageserver_port,
    )
    .map_err(UpError::InvalidPorts)?;
    let shutdown_requested = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&shutdown_requested))
            .map_err(UpError::Signals)?;
    }
    let interrupted = || shutdown_requested.load(Ordering::Relaxed);

    let bins = PgBinaries::locate()?;
    fs::create_dir_all(&options.dir).map_err(io_error("cannot create", &options.dir))?;
    let dir = options
        .dir
        .canonicalize()
        .map_err(io_error("cannot resolve", &options.dir))?;
    let layout = ClusterLayout::new(dir);
    let _lock = lock_cluster_dir(&layout)?;

    let recorded = ClusterManifest::read(&layout)?;
    let data_dir = layout.postgres_data_dir();
    match (&recorded, data_dir.exists()) {
        (Some(manifest), true) => {
            // About to be replaced by a fresh one; make sure it is ours and not running.
            let cluster = PgCluster::open(&bins, &data_dir)?;
            if let Some(pid) = cluster.postmaster_pid() {
                return Err(UpError::StalePostgres {
                    stop_command: stop_command_hint(&cluster),
                    data_dir,
                    pid,
                });
            }
            if let Ok(found) = cluster.system_id()
                && found != manifest.system_id
            {
                return Err(UpError::ForeignDataDirectory {
                    dir: layout.dir.clone(),
                    found,
                    expected: manifest.system_id,
                });
            }
        }
        // A lost data directory is rebuilt from the pageserver.
        (Some(_), false) => {}
        (None, true) => {
            return Err(UpError::HalfCreated {
                dir: layout.dir.clone(),
                data_dir,
                manifest: layout.manifest_path(),
            });
        }
        (None, false) => {}
    }
    if recorded.is_some() && read_base_info(&layout)?.is_none() {
        // Its compute cannot be rebuilt: say so before starting anything.
        return Err(UpError::NoPageserver {
            manifest: layout.manifest_path(),
        });
    }
    if let Some((pid, port)) = crate::endpoint::running_endpoint(&layout, crate::branch::MAIN) {
        return Err(UpError::MainEndpointRunning { pid, port });
    }
    ensure_ports_free(&options)?;

    let (fresh_cluster, mut manifest) = match recorded {
        Some(manifest) => {
            tracing::info!(dir = %layout.dir.display(), system_id = manifest.system_id, "reusing cluster");
            (None, manifest)
        }
        None => {
            let (cluster, manifest) = create_cluster(&bins, &layout, &options)?;
            (Some(cluster), manifest)
        }
    };
    manifest.postgres_port = options.postgres_port;
    manifest.safekeeper_ports = options.safekeeper_ports.to_vec();
    manifest.pageserver_port = Some(options.pageserver_port);
    let logs_dir = layout.logs_dir();
    fs::create_dir_all(&logs_dir).map_err(io_error("cannot create", &logs_dir))?;

    let exe = std::env::current_exe()
        .map_err(io_error("cannot find own executable", Path::new("tarn")))?;
    let exe = exe.to_string_lossy().into_owned();
    let mut running = RunningCluster::default();

    for (index, port) in options.safekeeper_ports.iter().enumerate() {
        if interrupted() {
            return Err(UpError::Interrupted);
        }
        let id = index + 1;
        let name = layout::safekeeper_name(id);
        let argv = vec![
            exe.clone(),
            "safekeeper".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            format!("{LISTEN_HOST}:{port}"),
            "--dir".into(),
            layout.safekeeper_dir(id).to_string_lossy().into_owned(),
            // Spread the safekeepers over the CPUs rather than stacking them on one.
            "--first-cpu".into(),
            (id - 1).to_string(),
        ];
        let component = Component::spawn(&name, argv, layout.log_path(&name))?;
        running.safekeepers.push(component);
    }
    for (component, port) in running.safekeepers.iter_mut().zip(options.safekeeper_ports) {
        component
            .wait_until_listening(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), &interrupted)?;
    }

    match read_base_info(&layout)? {
        Some(base_info) => {
            let mut pageserver_argv = vec![
                exe.clone(),
                "pageserver".into(),
                "--timeline-id".into(),
                manifest.timeline_id.to_string(),
                "--safekeepers".into(),
                options
                    .safekeeper_ports
                    .iter()
                    .map(|port| format!("{LISTEN_HOST}:{port}"))
                    .collect::<Vec<_>>()
                    .join(","),
                "--dir".into(),
                layout.pageserver_dir().to_string_lossy().into_owned(),
                "--listen".into(),
                format!("{LISTEN_HOST}:{}", options.pageserver_port),
                "--base-datadir".into(),
                layout.pageserver_base_dir().to_string_lossy().into_owned(),
                "--base-lsn".into(),
                base_info.lsn.clone(),
            ];
            if base_info.data_checksums {
                pageserver_argv.push("--data-checksums".into());
            }
            if base_info.wal_log_hints {
                pageserver_argv.push("--wal-log-hints".into());
            }
            let mut pageserver = Component::spawn(
                layout::PAGESERVER,
                pageserver_argv,
                layout.log_path(layout::PAGESERVER),
            )?;
            pageserver.wait_until_listening(
                SocketAddrV4::new(Ipv4Addr::LOCALHOST, options.pageserver_port),
                &interrupted,
            )?;
            running.pageserver = Some(pageserver);
        }
        None => {
            tracing::warn!(
                "{} is missing (a cluster created before tarn ran a pageserver): not starting one",
                layout.pageserver_base_info().display()
            );
            manifest.pageserver_port = None;
        }
    }

    // A fresh cluster boots from its initdb directory; an existing one from the
    // pageserver, at the end of its WAL (see the module docs).
    let mut cluster = match fresh_cluster {
        Some(cluster) => cluster,
        None => {
            if interrupted() {
                return Err(UpError::Interrupted);
            }
            if running.pageserver.is_none() {
                return Err(UpError::NoPageserver {
                    manifest: layout.manifest_path(),
                });
            }
            let safekeepers: Vec<SocketAddr> = options
                .safekeeper_ports
                .iter()
                .map(|port| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)))
                .collect();
            let pageserver = SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                options.pageserver_port,
            ));
            let lsn = crate::endpoint::prepare_compute(
                manifest.system_id,
                &safekeepers,
                pageserver,
                manifest.timeline_id,
                &data_dir,
            )?;
            tracing::info!(%lsn, "booting a fresh Postgres from the pageserver's basebackup");
            PgCluster::open(&bins, &data_dir)?
        }
    };
    cluster.set_settings(POSTGRES_SETTINGS)?;
    if interrupted() {
        return Err(UpError::Interrupted);
    }
    cluster.start(options.postgres_port)?;
    let postgres_record = ComponentRecord {
        pid: cluster.postmaster_pid(),
        argv: cluster.start_argv(),
        log_path: cluster.log_path(),
    };
    tracing::info!(pid = ?postgres_record.pid, port = options.postgres_port, "started postgres");
    running.postgres = Some(cluster);

    let safekeeper_list = options
        .safekeeper_ports
        .iter()
        .map(|port| format!("{LISTEN_HOST}:{port}"))
        .collect::<Vec<_>>()
        .join(",");
    let proposer_argv = vec![
        exe.clone(),
        "proposer".into(),
        "--postgres".into(),
        format!(
            "host={LISTEN_HOST} port={} user={SUPERUSER}",
            options.postgres_port
        ),
        "--safekeepers".into(),
        safekeeper_list,
        "--timeline-id".into(),
        manifest.timeline_id.to_string(),
        "--application-name".into(),
        PROPOSER_APPLICATION_NAME.into(),
        "--state-file".into(),
        layout.proposer_state_file().to_string_lossy().into_owned(),
    ];
    running.proposer = Some(Component::spawn(
        layout::PROPOSER,
        proposer_argv,
        layout.log_path(layout::PROPOSER),
    )?);

    manifest.supervisor_pid = Some(std::process::id());
    manifest.components = running.records();
    manifest
        .components
        .insert(layout::POSTGRES.to_string(), postgres_record);
    manifest.write(&layout)?;

    running.wait_until_proposer_is_sync_standby(&interrupted)?;
    let connect = format!(
        "host={LISTEN_HOST} port={} user={SUPERUSER}",
        options.postgres_port
    );
    tracing::info!("tarn is up; Ctrl-C or SIGTERM stops it");
    println!("psql \"{connect}\"");
    // The harness and scripts read this line to know the cluster accepts commits.
    let _ = io::stdout().flush();

    running.supervise(&shutdown_requested);
    tracing::info!("stopping");
    running.shutdown();
    manifest.supervisor_pid = None;
    for record in manifest.components.values_mut() {
        record.pid = None;
    }
    manifest.write(&layout)?;
    tracing::info!("stopped");
    Ok(())
}

/// initdb into `D/postgres` and record the new cluster in `D/tarn.json`.
fn create_cluster(
    bins: &PgBinaries,
    layout: &ClusterLayout,
    options: &UpOptions,
) -> Result<(PgCluster, ClusterManifest), UpError> {
    tracing::info!(dir = %layout.dir.display(), "creating a new cluster");
    let cluster = PgCluster::init(bins, &layout.postgres_data_dir())?;
    take_base_copy(&cluster, layout)?;
    let manifest = ClusterManifest {
        format_version: manifest::FORMAT_VERSION,
        system_id: cluster.system_id()?,
        timeline_id: random_timeline_id()?,
        postgres_port: options.postgres_port,
        safekeeper_ports: options.safekeeper_ports.to_vec(),
        pageserver_port: Some(options.pageserver_port),
        supervisor_pid: None,
        components: Default::default(),
    };
    manifest.write(layout)?;
    Ok((cluster, manifest))
}

/// Copies the data directory as initdb left it (before Postgres's first start) to
/// `D/pageserver/base` and records its checkpoint in `D/pageserver/base.json`.
///
/// The catalogs initdb's bootstrap wrote exist only in these files, not in WAL, so the
/// pageserver imports them once. The base LSN is the "Latest checkpoint location":
/// after a clean shutdown it is the start of the shutdown checkpoint record, equal to
/// its REDO location, and the files hold exactly the effects of every record before it
/// (the checkpoint record changes no page). The pageserver stores the files at that
/// LSN and ingests from that record on, a record boundary its WAL decoder can start at.
/// An online checkpoint (REDO before it) would mean torn files: refused.
fn take_base_copy(cluster: &PgCluster, layout: &ClusterLayout) -> Result<(), UpError> {
    let control = cluster.controldata()?;
    let field = |name: &str| control.get(name).cloned().unwrap_or_default();
    let checkpoint = field("Latest checkpoint location");
    let redo = field("Latest checkpoint's REDO location");
    let state = field("Database cluster state");
    if state != "shut down" || checkpoint.is_empty() || checkpoint != redo {
        return Err(UpError::BaseCopy(format!(
            "the new data directory is not cleanly shut down (state {state:?}, checkpoint {checkpoint:?}, redo {redo:?})"
        )));
    }
    let base = layout.pageserver_base_dir();
    if base.exists() {
        fs::remove_dir_all(&base).map_err(io_error("cannot remove", &base))?;
    }
    copy_tree(cluster.data_dir(), &base)
        .map_err(io_error("cannot copy the data directory to", &base))?;
    let info = BaseInfo {
        lsn: checkpoint,
        data_checksums: field("Data page checksum version") != "0",
        wal_log_hints: field("wal_log_hints setting") == "on",
    };
    let text = serde_json::to_string_pretty(&info)
        .map_err(|error| UpError::BaseCopy(error.to_string()))?;
    let path = layout.pageserver_base_info();
    manifest::write_atomically(&path, text.as_bytes()).map_err(io_error("cannot write", &path))
}

/// `None` for a cluster created before `tarn up` took a base copy.
fn read_base_info(layout: &ClusterLayout) -> Result<Option<BaseInfo>, UpError> {
    let path = layout.pageserver_base_info();
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("cannot read", &path)(error)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| UpError::BaseCopy(format!("{}: {error}", path.display())))
}

fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

fn random_timeline_id() -> Result<TimelineId, UpError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    File::open(path)
        .and_then(|mut file| file.read_exact(&mut bytes))
        .map_err(io_error("cannot read random bytes from", path))?;
    Ok(TimelineId(u128::from_be_bytes(bytes)))
}

/// Holds `D/tarn.lock` for the life of the returned file.
fn lock_cluster_dir(layout: &ClusterLayout) -> Result<File, UpError> {
    let path = layout.lock_path();
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_error("cannot open", &path))?;
    match os::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(UpError::AlreadyRunning {
            dir: layout.dir.clone(),
        }),
        Err(error) => Err(io_error("cannot lock", &path)(error)),
    }
}

fn ensure_ports_free(options: &UpOptions) -> Result<(), UpError> {
    let components = std::iter::once((options.postgres_port, layout::POSTGRES.to_string()))
        .chain(
            (1..)
                .zip(options.safekeeper_ports)
                .map(|(id, port)| (port, layout::safekeeper_name(id))),
        )
        .chain(std::iter::once((
            options.pageserver_port,
            layout::PAGESERVER.to_string(),
        )));
    for (port, component) in components {
        match ports::port_is_free(port) {
            Ok(true) => {}
            Ok(false) => return Err(UpError::PortInUse { port, component }),
            Err(source) => return Err(UpError::PortCheck { port, source }),
        }
    }
    Ok(())
}

fn stop_command_hint(cluster: &PgCluster) -> String {
    let mut argv = cluster.start_argv();
    // start_argv ends with: pg_ctl start -w -s -t N -D DATA -l LOG
    if let Some(start) = argv.iter().position(|arg| arg == "start") {
        argv.truncate(start);
        argv.extend(["stop", "-m", "fast", "-D"].map(String::from));
        argv.push(cluster.data_dir().to_string_lossy().into_owned());
    }
    argv.iter()
        .map(|arg| command::shell_quote(arg))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One child process of `tarn up` (a safekeeper or the proposer).
struct Component {
    name: String,
    argv: Vec<String>,
    log_path: PathBuf,
    child: Child,
    exit_status: Option<ExitStatus>,
}

impl Component {
    /// Starts `argv` with stdout and stderr appended to `log_path`, in a process group
    /// of its own (a terminal's Ctrl-C reaches only the supervisor, which stops children
    /// in order), and with SIGTERM delivered if the supervisor dies.
    fn spawn(name: &str, argv: Vec<String>, log_path: PathBuf) -> Result<Self, UpError> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io_error("cannot open log", &log_path))?;
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            log,
            "--- tarn up: starting {name} at unix time {}: {}",
            since_epoch.as_secs(),
            argv.join(" ")
        )
        .map_err(io_error("cannot write log", &log_path))?;
        let stderr = log
            .try_clone()
            .map_err(io_error("cannot open log", &log_path))?;
        let spawn_error = |source| UpError::Spawn {
            component: name.to_string(),
            argv: argv.clone(),
            source,
        };
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| spawn_error(io::Error::other("empty command line")))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0);
        os::deliver_signal_on_parent_exit(&mut command, libc::SIGTERM);
        let child = command.spawn().map_err(spawn_error)?;
        tracing::info!(component = name, pid = child.id(), "started");
        Ok(Self {
            name: name.to_string(),
            argv,
            log_path,
            child,
            exit_status: None,
        })
    }

    fn record(&self) -> ComponentRecord {
        ComponentRecord {
            pid: Some(self.child.id()),
            argv: self.argv.clone(),
            log_path: self.log_path.clone(),
        }
    }

    /// `Some(status)` once the child has exited (reaping it).
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit_status.is_none() {
            match self.child.try_wait() {
                Ok(status) => self.exit_status = status,
                Err(error) => {
                    tracing::error!(component = %self.name, "cannot poll child: {error}");
                }
            }
        }
        self.exit_status
    }

    fn exited_during_startup(&self, status: ExitStatus) -> UpError {
        UpError::ExitedDuringStartup {
            component: self.name.clone(),
            status,
            log: self.log_path.clone(),
        }
    }

    fn wait_until_listening(
        &mut self,
        addr: SocketAddrV4,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), UpError> {
        let deadline = Instant::now() + SAFEKEEPER_LISTEN_TIMEOUT;
        loop {
            if let Some(status) = self.poll_exit() {
                return Err(self.exited_during_startup(status));
            }
            if ports::is_listening(addr) {
                return Ok(());
            }
            if interrupted() {
                return Err(UpError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(UpError::NotListening {
                    component: self.name.clone(),
                    addr,
                    timeout: SAFEKEEPER_LISTEN_TIMEOUT,
                    log: self.log_path.clone(),
                });
            }
            thread::sleep(STARTUP_POLL_INTERVAL);
        }
    }

    fn request_stop(&mut self) {
        if self.poll_exit().is_some() {
            return;
        }
        if let Err(error) = os::send_signal(self.child.id(), libc::SIGTERM) {
            tracing::warn!(component = %self.name, "cannot send SIGTERM: {error}");
        }
    }

    /// Waits for the child to exit until `deadline`, then kills its process group.
    fn finish_stop(&mut self, deadline: Instant) {
        if self.exit_status.is_some() {
            return;
        }
        match command::wait_until(&mut self.child, deadline) {
            Ok(Some(status)) => {
                self.exit_status = Some(status);
                tracing::info!(component = %self.name, %status, "stopped");
                return;
            }
            Ok(None) => tracing::warn!(
                component = %self.name,
                "did not exit within {} s of SIGTERM; killing it",
                COMPONENT_STOP_GRACE.as_secs()
            ),
            Err(error) => {
                tracing::warn!(component = %self.name, "cannot wait: {error}; killing it")
            }
        }
        let _ = os::signal_process_group(self.child.id(), libc::SIGKILL);
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => self.exit_status = Some(status),
            Err(error) => tracing::error!(component = %self.name, "cannot reap: {error}"),
        }
    }
}

/// What `tarn up` has started so far; dropping it stops everything, so an error in the
/// middle of startup leaves nothing behind.
#[derive(Default)]
struct RunningCluster {
    safekeepers: Vec<Component>,
    postgres: Option<PgCluster>,
    proposer: Option<Component>,
    pageserver: Option<Component>,
}

impl RunningCluster {
    fn records(&self) -> std::collections::BTreeMap<String, ComponentRecord> {
        self.safekeepers
            .iter()
            .chain(self.proposer.as_ref())
            .chain(self.pageserver.as_ref())
            .map(|component| (component.name.clone(), component.record()))
            .collect()
    }

    fn wait_until_proposer_is_sync_standby(
        &mut self,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<(), UpError> {
        let (Some(postgres), Some(proposer)) = (self.postgres.as_ref(), self.proposer.as_mut())
        else {
            return Ok(());
        };
        let query = format!(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = '{PROPOSER_APPLICATION_NAME}' AND state = 'streaming'"
        );
        let deadline = Instant::now() + PROPOSER_READY_TIMEOUT;
        loop {
            if let Some(status) = proposer.poll_exit() {
                return Err(proposer.exited_during_startup(status));
            }
            let sync_state =
                postgres.psql_with_timeout("postgres", &query, READINESS_QUERY_TIMEOUT);
            if sync_state.is_ok_and(|state| state.lines().any(|line| line == "sync")) {
                return Ok(());
            }
            if interrupted() {
                return Err(UpError::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(UpError::ProposerNotReady {
                    timeout: PROPOSER_READY_TIMEOUT,
                    log: proposer.log_path.clone(),
                });
            }
            thread::sleep(STARTUP_POLL_INTERVAL);
        }
    }

    /// Watches the children until a shutdown is requested. Reports deaths; restarts
    /// nothing.
    fn supervise(&mut self, shutdown_requested: &AtomicBool) {
        let mut postgres_was_running = true;
        while !shutdown_requested.load(Ordering::Relaxed) {
            for component in self
                .safekeepers
                .iter_mut()
                .chain(self.proposer.as_mut())
                .chain(self.pageserver.as_mut())
            {
                let already_reported = component.exit_status.is_some();
                if let (false, Some(status)) = (already_reported, component.poll_exit()) {
                    tracing::error!(
                        component = %component.name,
                        pid = component.child.id(),
                        %status,
                        log = %component.log_path.display(),
                        "exited unexpectedly; not restarting it"
                    );
                }
            }
            if let Some(postgres) = &self.postgres {
                let running = postgres.is_running();
                if postgres_was_running && !running {
                    tracing::error!(
                        log = %postgres.log_path().display(),
                        "postgres stopped unexpectedly; not restarting it"
                    );
                } else if !postgres_was_running && running {
                    tracing::info!(pid = ?postgres.postmaster_pid(), "postgres is running again");
                }
                postgres_was_running = running;
            }
            thread::sleep(SUPERVISE_POLL_INTERVAL);
        }
    }

    /// Stops Postgres (fast, then immediate), then the proposer, then the safekeepers
    /// (SIGTERM, then SIGKILL after a grace period). Idempotent.
    fn shutdown(&mut self) {
        if let Some(mut postgres) = self.postgres.take() {
            tracing::info!("stopping postgres (fast)");
            if let Err(error) = postgres.stop_within(StopMode::Fast, POSTGRES_FAST_STOP_TIMEOUT) {
                tracing::warn!("fast stop failed: {error}; stopping postgres in immediate mode");
                if let Err(error) = postgres.stop(StopMode::Immediate) {
                    tracing::error!("cannot stop postgres: {error}");
                }
            }
        }
        if let Some(mut proposer) = self.proposer.take() {
            proposer.request_stop();
            proposer.finish_stop(Instant::now() + COMPONENT_STOP_GRACE);
        }
        if let Some(mut pageserver) = self.pageserver.take() {
            pageserver.request_stop();
            pageserver.finish_stop(Instant::now() + COMPONENT_STOP_GRACE);
        }
        for safekeeper in &mut self.safekeepers {
            safekeeper.request_stop();
        }
        let deadline = Instant::now() + COMPONENT_STOP_GRACE;
        for mut safekeeper in self.safekeepers.drain(..) {
            safekeeper.finish_stop(deadline);
        }
    }
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_postgres() {
        assert_eq!(default_safekeeper_ports(55432), Some([55433, 55434, 55435]));
        assert_eq!(default_safekeeper_ports(65533), None);
    }

    #[test]
    fn rejects_duplicate_and_zero_ports() {
        assert!(validate_ports(5000, &[5001, 5002, 5003], 5004).is_ok());
        assert_eq!(
            validate_ports(5000, &[5001, 5000, 5003], 5004),
            Err("port 5000 is given to two components".to_string())
        );
        assert!(validate_ports(0, &[5001, 5002, 5003], 5004).is_err());
        assert!(validate_ports(5000, &[5001, 5002, 5003], 5003).is_err());
    }
}
