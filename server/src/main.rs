//! The `tarn` command line: `tarn up`, `tarn status`, and the `safekeeper` and
//! `proposer` roles that `tarn up` starts as child processes.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, error::ErrorKind};
use tarn_server::layout::SAFEKEEPER_COUNT;
use tarn_server::{status, up};
use tarn_wal::decode::{ForkNumber, RelFileNode};
use tarn_wal::{Lsn, NodeId, TimelineId};

#[derive(Debug, Parser)]
#[command(
    name = "tarn",
    version,
    about = "Durable WAL for vanilla PostgreSQL 15 on a quorum of safekeepers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local cluster in the foreground: 3 safekeepers, PostgreSQL 15 and the
    /// proposer. Ctrl-C or SIGTERM stops it.
    Up(UpArgs),
    /// Show the state of the cluster in a directory.
    Status(StatusArgs),
    /// Run one safekeeper (a Paxos acceptor storing WAL). Started by `tarn up`.
    Safekeeper(SafekeeperArgs),
    /// Run the proposer: Postgres's synchronous standby, replicating its WAL to the
    /// safekeepers. Started by `tarn up`.
    Proposer(ProposerArgs),
    /// Run the deterministic quorum simulation over seeds (faults: loss, reordering,
    /// duplication, partitions, crashes, torn writes). A failing seed replays exactly.
    Simulate(SimulateArgs),
    /// Generate load against running components and measure them.
    Loadgen(LoadgenArgs),
    /// Run the pageserver of one timeline: follows its committed WAL on the safekeepers
    /// and serves GetPage@LSN. Started by `tarn up`.
    Pageserver(PageserverArgs),
    /// Read one page (or a relation's size) from a pageserver, for debugging.
    Getpage(GetpageArgs),
    /// A data directory as of an LSN from a pageserver, which vanilla PostgreSQL 15
    /// boots with no WAL replay: a tar stream on stdout (`> backup.tar`), or unpacked
    /// into a new directory with -D.
    Basebackup(BasebackupArgs),
    /// Named branches of a cluster's database: create one (from any branch, at any
    /// LSN; nothing is copied) or list them.
    Branch(BranchArgs),
    /// Computes: vanilla Postgres booted on a branch from a pageserver basebackup.
    Endpoint(EndpointArgs),
}

#[derive(Debug, clap::Args)]
struct BranchArgs {
    #[command(subcommand)]
    action: BranchAction,
}

#[derive(Debug, Subcommand)]
enum BranchAction {
    /// Create branch NAME from a branch at an LSN (default: its newest).
    Create {
        name: String,
        /// The parent branch.
        #[arg(long, default_value = tarn_server::branch::MAIN)]
        from: String,
        /// The branch point (default: the newest LSN the pageserver ingested).
        #[arg(long, conflicts_with = "time")]
        lsn: Option<Lsn>,
        /// Point-in-time: branch with what was committed at this time
        /// ("YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]]", UTC by default, or @UNIX_SECONDS).
        #[arg(long)]
        time: Option<String>,
        /// Cluster directory.
        #[arg(long, default_value = "./tarn-data")]
        dir: PathBuf,
    },
    /// Show the branch tree with branch points.
    List {
        /// Cluster directory.
        #[arg(long, default_value = "./tarn-data")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct EndpointArgs {
    #[command(subcommand)]
    action: EndpointAction,
}

#[derive(Debug, Subcommand)]
enum EndpointAction {
    /// Boot a fresh Postgres on BRANCH at its newest committed LSN.
    Start {
        branch: String,
        /// The port Postgres listens on (127.0.0.1).
        #[arg(long)]
        port: u16,
        /// Cluster directory.
        #[arg(long, default_value = "./tarn-data")]
        dir: PathBuf,
    },
    /// Stop the endpoint on BRANCH (Postgres, then its proposer).
    Stop {
        branch: String,
        /// Cluster directory.
        #[arg(long, default_value = "./tarn-data")]
        dir: PathBuf,
    },
    /// List endpoints.
    List {
        /// Cluster directory.
        #[arg(long, default_value = "./tarn-data")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct PageserverArgs {
    /// The tarn timeline id (32 hex digits).
    #[arg(long)]
    timeline_id: TimelineId,
    /// Safekeeper addresses (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_host_port)]
    safekeepers: Vec<String>,
    /// Directory of the page store.
    #[arg(long)]
    dir: PathBuf,
    /// Address for GetPage@LSN clients, e.g. 127.0.0.1:55436.
    #[arg(long)]
    listen: SocketAddr,
    /// A cleanly shut down data directory to seed a new store with (the catalogs
    /// initdb wrote exist only in files).
    #[arg(long, requires = "base_lsn")]
    base_datadir: Option<PathBuf>,
    /// The base data directory's checkpoint LSN ("Latest checkpoint location").
    #[arg(long, requires = "base_datadir")]
    base_lsn: Option<Lsn>,
    /// The cluster has data checksums.
    #[arg(long)]
    data_checksums: bool,
    /// wal_log_hints was on at the base LSN.
    #[arg(long)]
    wal_log_hints: bool,
    /// Executors the timelines are partitioned across (by branch tree).
    #[arg(long, default_value_t = 1, value_parser = parse_core_count)]
    cores: usize,
    /// Allowed CPU to pin the first executor to.
    #[arg(long, default_value_t = 0)]
    first_cpu: usize,
}

#[derive(Debug, clap::Args)]
struct BasebackupArgs {
    /// The pageserver's address.
    #[arg(long)]
    pageserver: SocketAddr,
    /// The timeline (default: the pageserver's only root timeline).
    #[arg(long)]
    timeline: Option<TimelineId>,
    /// The LSN whose state the backup holds (default: the newest the pageserver
    /// ingested).
    #[arg(long)]
    lsn: Option<Lsn>,
    /// Unpack into this directory (created; it must not exist or be empty) instead of
    /// writing the tar stream to stdout.
    #[arg(short = 'D', long = "pgdata")]
    pgdata: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct GetpageArgs {
    /// The pageserver's address.
    #[arg(long)]
    pageserver: SocketAddr,
    /// The timeline to read (default: the pageserver's only root timeline).
    #[arg(long)]
    timeline: Option<TimelineId>,
    /// The relation as TABLESPACE/DATABASE/RELFILENODE oids, e.g. 1663/5/16384.
    #[arg(long, value_parser = parse_rel)]
    rel: RelFileNode,
    /// The fork.
    #[arg(long, default_value = "main", value_parser = parse_fork)]
    fork: ForkNumber,
    /// The block number.
    #[arg(long, default_value_t = 0)]
    block: u32,
    /// The LSN to read at (default: the newest the pageserver ingested).
    #[arg(long)]
    lsn: Option<Lsn>,
    /// Print the relation fork's size in blocks instead of a page.
    #[arg(long, conflicts_with_all = ["out", "hex"])]
    size: bool,
    /// Write the 8 KiB page to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Print the page as hex, 32 bytes a line.
    #[arg(long, conflicts_with = "out")]
    hex: bool,
}

/// `SPC/DB/REL`, three oids.
fn parse_rel(text: &str) -> Result<RelFileNode, String> {
    let parts = text
        .split('/')
        .map(|part| part.parse::<u32>())
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| format!("{text:?} is not SPC/DB/REL (three oids)"))?;
    match parts[..] {
        [spc_node, db_node, rel_node] => Ok(RelFileNode {
            spc_node,
            db_node,
            rel_node,
        }),
        _ => Err(format!("{text:?} is not SPC/DB/REL (three oids)")),
    }
}

fn parse_fork(text: &str) -> Result<ForkNumber, String> {
    match text {
        "main" => Ok(ForkNumber::Main),
        "vm" => Ok(ForkNumber::VisibilityMap),
        "init" => Ok(ForkNumber::Init),
        _ => Err(format!(
            "{text:?} is not a fork tarn keeps (main, vm, init)"
        )),
    }
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    #[command(subcommand)]
    target: LoadgenTarget,
}

#[derive(Debug, Subcommand)]
enum LoadgenTarget {
    /// Act as a proposer on fresh timelines and append synthetic WAL to the
    /// safekeepers; report quorum append latency and throughput.
    Wal(LoadgenWalArgs),
    /// Read pages of one relation from the pageserver (GetPage@LSN) at the latest or at
    /// random historic LSNs; report latency and pages/s. With --pread-file, read the
    /// same blocks from a file instead (a baseline).
    Getpage(LoadgenGetpageArgs),
    /// Ingest a real Postgres WAL into fresh page stores in process: WAL ingest MiB/s
    /// per core, GetPage@LSN by deltas replayed (hot and cold) and the pushdown
    /// threshold's effect, each against a baseline run side by side (benches/ingest.sh).
    Ingest(LoadgenIngestArgs),
}

#[derive(Debug, clap::Args)]
struct LoadgenIngestArgs {
    /// The base: a cleanly shut down data directory (imported at its checkpoint).
    #[arg(long)]
    base_datadir: PathBuf,
    /// `pg_controldata` output (C locale) of the base.
    #[arg(long)]
    controldata: PathBuf,
    /// The pg_wal directory holding every record from the base's checkpoint on.
    #[arg(long)]
    wal_dir: PathBuf,
    /// Where the last record must start (the final shutdown checkpoint).
    #[arg(long)]
    end_lsn: Option<Lsn>,
    /// Directory for the stores (one per threshold).
    #[arg(long)]
    work_dir: PathBuf,
    /// A relation to read at the latest LSN, as NAME=SPC/DB/REL (repeatable).
    #[arg(long = "rel", value_parser = tarn_tools::loadgen::ingest::parse_named_rel)]
    rels: Vec<(String, RelFileNode)>,
    /// Pushdown thresholds to compare (deltas, or off), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64,off", value_parser = tarn_tools::loadgen::ingest::Threshold::parse)]
    thresholds: Vec<tarn_tools::loadgen::ingest::Threshold>,
    /// The threshold of the store GetPage by chain length is measured on.
    #[arg(long, default_value = "64", value_parser = tarn_tools::loadgen::ingest::Threshold::parse)]
    chain_threshold: tarn_tools::loadgen::ingest::Threshold,
    /// Deltas replayed per chain case, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,4,16")]
    chain_lengths: Vec<u32>,
    /// Image+deltas segments sampled for the chain cases.
    #[arg(long, default_value_t = 300)]
    chain_samples: usize,
    /// Segments taken from one page at most.
    #[arg(long, default_value_t = 4)]
    max_segments_per_key: usize,
    /// Hot passes over the chain sample.
    #[arg(long, default_value_t = 20)]
    hot_passes: usize,
    /// Cold reads per chain case.
    #[arg(long, default_value_t = 200)]
    cold_reads: usize,
    /// Blocks drawn per relation for the threshold sweep.
    #[arg(long, default_value_t = 2000)]
    sample_blocks: usize,
    /// Hot passes over them.
    #[arg(long, default_value_t = 3)]
    sweep_passes: usize,
    /// Of them, read this many cold.
    #[arg(long, default_value_t = 200)]
    cold_sample: usize,
    /// Freeze, flush and compact when the open layer exceeds this (k and m suffixes).
    #[arg(long, default_value = "32m", value_parser = tarn_tools::loadgen::wal::parse_byte_size)]
    flush_at_bytes: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Keep the stores in --work-dir.
    #[arg(long)]
    keep_stores: bool,
}

#[derive(Debug, clap::Args)]
struct LoadgenGetpageArgs {
    /// Pageserver GetPage@LSN address (host:port).
    #[arg(long, value_parser = parse_host_port, required_unless_present = "pread_file")]
    pageserver: Option<String>,
    /// Instead of the pageserver, pread 8 KiB blocks from this file (e.g. Postgres's
    /// own data file of the relation); --lsn is then ignored.
    #[arg(long, conflicts_with = "pageserver")]
    pread_file: Option<PathBuf>,
    /// The timeline to read (default: the pageserver's only root timeline).
    #[arg(long)]
    timeline: Option<TimelineId>,
    /// Relation as SPC/DB/REL.
    #[arg(long, value_parser = parse_rel)]
    rel: RelFileNode,
    /// Fork: main, vm or init.
    #[arg(long, default_value = "main", value_parser = parse_fork)]
    fork: ForkNumber,
    /// Blocks to read from (default: the relation's size).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    blocks: Option<u32>,
    /// Read only the first FRACTION of the blocks (0 < FRACTION ≤ 1).
    #[arg(long, default_value_t = 1.0)]
    hot_set: f64,
    /// latest (the newest ingested LSN) or historic (random LSNs in [--min-lsn, latest]).
    #[arg(long, default_value = "latest")]
    lsn: String,
    /// Lowest LSN of historic reads (X/Y).
    #[arg(long)]
    min_lsn: Option<Lsn>,
    /// Connections (one thread each).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Requests outstanding per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Stop after this many measured reads in all (instead of after --duration).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Random seed (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct LoadgenWalArgs {
    /// Safekeeper addresses (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_host_port)]
    safekeepers: Vec<String>,
    /// Payload of each WAL record in bytes (k and m suffixes: 8k, 128k).
    #[arg(long, default_value = "8k", value_parser = tarn_tools::loadgen::wal::parse_byte_size)]
    record_size: usize,
    /// Group records into appends of at least this many bytes (default: one record per append; at most 1m).
    #[arg(long, default_value = "0", value_parser = tarn_tools::loadgen::wal::parse_byte_size)]
    append_size: usize,
    /// Concurrent independent timelines.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Appends outstanding per stream (1 measures latency; more measures pipelined throughput).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Timeline of the first stream (32 hex digits; stream i uses it + i); random by default.
    #[arg(long)]
    timeline_id: Option<TimelineId>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Run only this seed (to replay a failure).
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Steps of faulty running per seed (then faults stop and progress is required).
    #[arg(long, default_value_t = 3000)]
    steps: u32,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Cluster directory; created on first run, reused afterwards.
    #[arg(long, default_value = "./tarn-data")]
    dir: PathBuf,
    /// Postgres port; safekeepers use the next three unless --safekeeper-ports is given.
    #[arg(long, default_value_t = up::DEFAULT_POSTGRES_PORT, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The three safekeeper ports, comma-separated (default: PORT+1,PORT+2,PORT+3).
    #[arg(long, value_parser = parse_safekeeper_ports, value_name = "P1,P2,P3")]
    safekeeper_ports: Option<[u16; SAFEKEEPER_COUNT]>,
    /// The pageserver's GetPage@LSN port (default: PORT+4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pageserver_port: Option<u16>,
    /// Run in the foreground (the default, and for now the only mode).
    #[arg(long)]
    foreground: bool,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// Cluster directory.
    #[arg(long, default_value = "./tarn-data")]
    dir: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SafekeeperArgs {
    /// This safekeeper's node id (1-based).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// Address to listen on for proposers, e.g. 127.0.0.1:55433.
    #[arg(long)]
    listen: SocketAddr,
    /// Directory holding this safekeeper's WAL and state.
    #[arg(long)]
    dir: PathBuf,
    /// Number of cores (one executor each) to use.
    #[arg(long, default_value_t = 1, value_parser = parse_core_count)]
    cores: usize,
    /// Allowed CPU (by position) to pin the first executor to; others follow. Lets
    /// several safekeepers on one machine use different CPUs.
    #[arg(long, default_value_t = 0)]
    first_cpu: usize,
}

#[derive(Debug, clap::Args)]
struct ProposerArgs {
    /// libpq connection string of the Postgres primary, e.g. "host=127.0.0.1 port=55432 user=postgres".
    #[arg(long, required_unless_present = "sync_safekeepers")]
    postgres: Option<String>,
    /// Safekeeper addresses (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_host_port)]
    safekeepers: Vec<String>,
    /// The tarn timeline id (32 hex digits).
    #[arg(long)]
    timeline_id: TimelineId,
    /// application_name to connect with (named in synchronous_standby_names).
    #[arg(long, required_unless_present = "sync_safekeepers")]
    application_name: Option<String>,
    /// Where the proposer writes its state for `tarn status`.
    #[arg(long)]
    state_file: Option<PathBuf>,
    /// Where a timeline new to the safekeepers starts (the checkpoint LSN of a compute
    /// booted from a basebackup); default: the start of Postgres's current segment.
    #[arg(long)]
    timeline_start: Option<Lsn>,
    /// Without Postgres: win a new term (fencing the old proposer), commit the end of
    /// the timeline's WAL on a majority, print that LSN and exit. A replacement compute
    /// starts there.
    #[arg(long, requires = "system_id", conflicts_with_all = ["postgres", "application_name", "state_file", "timeline_start"])]
    sync_safekeepers: bool,
    /// With --sync-safekeepers: the database system id the timeline belongs to.
    #[arg(long)]
    system_id: Option<u64>,
    /// With --sync-safekeepers: give up after this many seconds.
    #[arg(long, default_value_t = tarn_wal::proposer::DEFAULT_SYNC_TIMEOUT.as_secs())]
    sync_timeout_secs: u64,
}

fn parse_safekeeper_ports(text: &str) -> Result<[u16; SAFEKEEPER_COUNT], String> {
    let ports = text
        .split(',')
        .map(|part| {
            part.trim()
                .parse::<u16>()
                .map_err(|_| format!("{part:?} is not a port number"))
        })
        .collect::<Result<Vec<u16>, String>>()?;
    ports.try_into().map_err(|ports: Vec<u16>| {
        format!("expected {SAFEKEEPER_COUNT} ports, got {}", ports.len())
    })
}

/// A positive number of cores.
fn parse_core_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(cores) if cores > 0 => Ok(cores),
        _ => Err(format!("{text:?} is not a positive number of cores")),
    }
}

/// Accepts `host:port` (a name or an address, and a port number).
fn parse_host_port(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_string())
        }
        _ => Err(format!("{text:?} is not host:port")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&format!("{error:#}")));
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Stderr for log lines, dropping a line that cannot be written (a full disk under a
/// redirected log): losing a log line must never take a server down, and the tracing
/// fallback for write errors (eprintln!) panics.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Errors print on one line: multi-line parts (a tool's stderr) are joined with " | ".
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            let safekeeper_ports = match args.safekeeper_ports {
                Some(ports) => ports,
                None => up::default_safekeeper_ports(args.port).unwrap_or_else(|| {
                    usage_error(&format!(
                        "--port {} leaves no room for the safekeeper ports (PORT+1..PORT+3); pass --safekeeper-ports",
                        args.port
                    ))
                }),
            };
            let pageserver_port = match args.pageserver_port {
                Some(port) => port,
                None => up::default_pageserver_port(args.port).unwrap_or_else(|| {
                    usage_error(&format!(
                        "--port {} leaves no room for the pageserver port (PORT+4); pass --pageserver-port",
                        args.port
                    ))
                }),
            };
            if let Err(message) = up::validate_ports(args.port, &safekeeper_ports, pageserver_port)
            {
                usage_error(&message);
            }
            up::run(up::UpOptions {
                dir: args.dir,
                postgres_port: args.port,
                safekeeper_ports,
                pageserver_port,
            })?;
            Ok(())
        }
        Command::Status(args) => {
            let report = status::collect(args.dir)?;
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string(&report).context("cannot encode status as JSON")?
                );
            } else {
                print!("{}", status::render_table(&report));
            }
            Ok(())
        }
        Command::Safekeeper(args) => run_safekeeper_role(args),
        Command::Proposer(args) => run_proposer_role(args),
        Command::Simulate(args) => run_simulation(args),
        Command::Pageserver(args) => run_pageserver_role(args),
        Command::Getpage(args) => run_getpage(args),
        Command::Basebackup(args) => run_basebackup(args),
        Command::Branch(args) => run_branch(args),
        Command::Endpoint(args) => run_endpoint(args),
        Command::Loadgen(LoadgenArgs {
            target: LoadgenTarget::Wal(args),
        }) => run_wal_loadgen(args),
        Command::Loadgen(LoadgenArgs {
            target: LoadgenTarget::Getpage(args),
        }) => run_getpage_loadgen(args),
        Command::Loadgen(LoadgenArgs {
            target: LoadgenTarget::Ingest(args),
        }) => run_ingest_loadgen(args),
    }
}

fn run_branch(args: BranchArgs) -> anyhow::Result<()> {
    use tarn_server::branch::Branches;
    use tarn_server::layout::ClusterLayout;
    match args.action {
        BranchAction::Create {
            name,
            from,
            lsn,
            time,
            dir,
        } => {
            use tarn_server::branch::{BranchPoint, parse_time};
            let point = match (lsn, time) {
                (Some(lsn), _) => BranchPoint::Lsn(lsn),
                (None, Some(text)) => BranchPoint::Time {
                    unix_micros: parse_time(&text)?,
                    text,
                },
                (None, None) => BranchPoint::Latest,
            };
            let mut branches = Branches::open(&ClusterLayout::new(dir))?;
            let (branch, took) = branches.create(&name, &from, &point)?;
            let (parent, at) = branch.parent.unwrap_or_default();
            println!(
                "created branch {name} (timeline {}) from {parent} at {at} in {:.1} ms",
                branch.timeline_id,
                took.as_secs_f64() * 1e3
            );
        }
        BranchAction::List { dir } => {
            let branches = Branches::open(&ClusterLayout::new(dir))?;
            print!("{}", branches.render_tree()?);
        }
    }
    Ok(())
}

fn run_endpoint(args: EndpointArgs) -> anyhow::Result<()> {
    use tarn_server::endpoint;
    use tarn_server::layout::ClusterLayout;
    match args.action {
        EndpointAction::Start { branch, port, dir } => {
            let started = endpoint::start(&ClusterLayout::new(dir), &branch, port)?;
            eprintln!(
                "endpoint {} booted at {} in {:.0} ms",
                started.name,
                started.lsn,
                started.boot.as_secs_f64() * 1e3
            );
            println!("psql \"{}\"", started.connstring);
        }
        EndpointAction::Stop { branch, dir } => {
            endpoint::stop(&ClusterLayout::new(dir), &branch)?;
        }
        EndpointAction::List { dir } => {
            for (record, running) in endpoint::list(&ClusterLayout::new(dir))? {
                println!(
                    "{}\tport {}\tbooted at {}\t{}",
                    record.branch,
                    record.port,
                    record.lsn,
                    if running { "running" } else { "stopped" }
                );
            }
        }
    }
    Ok(())
}

fn run_ingest_loadgen(args: LoadgenIngestArgs) -> anyhow::Result<()> {
    use tarn_tools::loadgen::ingest::{IngestBenchOptions, run};
    let options = IngestBenchOptions {
        base_datadir: args.base_datadir,
        controldata: args.controldata,
        wal_dir: args.wal_dir,
        end_lsn: args.end_lsn,
        work_dir: args.work_dir,
        rels: args.rels,
        thresholds: args.thresholds,
        chain_threshold: args.chain_threshold,
        chain_lengths: args.chain_lengths,
        chain_samples: args.chain_samples,
        max_segments_per_key: args.max_segments_per_key,
        hot_passes: args.hot_passes,
        cold_reads: args.cold_reads,
        sample_blocks: args.sample_blocks,
        sweep_passes: args.sweep_passes,
        cold_sample: args.cold_sample,
        flush_at_bytes: args.flush_at_bytes,
        seed: args.seed,
        keep_stores: args.keep_stores,
    };
    let report = run(&options)?;
    print!("{}", report.render_markdown());
    Ok(())
}

fn run_getpage_loadgen(args: LoadgenGetpageArgs) -> anyhow::Result<()> {
    use tarn_tools::loadgen::getpage::{GetPageLoadOptions, Target, parse_lsn_mode, run};
    let seconds = |name: &str, value: f64| {
        std::time::Duration::try_from_secs_f64(value)
            .map_err(|_| anyhow::anyhow!("--{name} {value} is not a number of seconds"))
    };
    let target = match (args.pageserver, args.pread_file) {
        (_, Some(path)) => Target::File(path),
        (Some(addr), None) => Target::Pageserver(addr),
        (None, None) => anyhow::bail!("--pageserver or --pread-file is required"),
    };
    let options = GetPageLoadOptions {
        target,
        timeline: args.timeline,
        rel: args.rel,
        fork: args.fork,
        blocks: args.blocks,
        hot_set: args.hot_set,
        lsn: parse_lsn_mode(&args.lsn, args.min_lsn).map_err(anyhow::Error::msg)?,
        concurrency: args.concurrency,
        pipeline: args.pipeline,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        requests: args.requests,
        seed: args.seed,
    };
    let report = run(&options)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_table());
    }
    Ok(())
}

fn run_wal_loadgen(args: LoadgenWalArgs) -> anyhow::Result<()> {
    let seconds = |name: &str, value: f64| {
        std::time::Duration::try_from_secs_f64(value)
            .map_err(|_| anyhow::anyhow!("--{name} {value} is not a number of seconds"))
    };
    let options = tarn_tools::loadgen::wal::WalLoadOptions {
        safekeepers: args.safekeepers,
        record_size_bytes: args.record_size,
        append_size_bytes: args.append_size,
        streams: args.streams,
        in_flight: args.in_flight,
        duration: seconds("duration", args.duration)?,
        warmup: seconds("warmup", args.warmup)?,
        timeline_id: args.timeline_id,
        ..Default::default()
    };
    let report = tarn_tools::loadgen::wal::run(&options)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_table());
    }
    Ok(())
}

fn run_simulation(args: SimulateArgs) -> anyhow::Result<()> {
    let (first, count) = match args.seed {
        Some(seed) => (seed, 1),
        None => (args.first_seed, args.seeds),
    };
    let started = std::time::Instant::now();
    let (mut commits, mut elections, mut crashes) = (0u64, 0u64, 0u64);
    for seed in first..first.saturating_add(count) {
        match tarn_wal::sim::run(&tarn_wal::sim::SimOptions {
            seed,
            steps: args.steps,
        }) {
            Ok(outcome) => {
                commits += outcome.commits;
                elections += outcome.elections;
                crashes += outcome.safekeeper_crashes;
            }
            Err(failure) => {
                eprintln!("{failure}");
                anyhow::bail!("simulation seed {seed} failed");
            }
        }
    }
    println!(
        "{count} seeds passed ({first}..{}) in {:.1?}: {commits} commits, {elections} elections, {crashes} safekeeper crashes",
        first.saturating_add(count),
        started.elapsed()
    );
    Ok(())
}

/// Reports a bad combination of `tarn up` arguments the way clap reports its own, with
/// `tarn up`'s usage (exit code 2).
fn usage_error(message: &str) -> ! {
    <UpArgs as clap::Args>::augment_args(clap::Command::new("tarn up"))
        .error(ErrorKind::ValueValidation, message)
        .exit()
}

fn run_safekeeper_role(args: SafekeeperArgs) -> anyhow::Result<()> {
    tarn_wal::safekeeper::run(tarn_wal::safekeeper::SafekeeperConfig {
        node_id: NodeId(args.id),
        listen: args.listen,
        data_dir: args.dir,
        cores: args.cores,
        first_cpu: args.first_cpu,
    })?;
    Ok(())
}

fn run_pageserver_role(args: PageserverArgs) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs;
    let shutdown = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, std::sync::Arc::clone(&shutdown))
            .context("cannot install signal handlers")?;
    }
    let mut safekeepers = Vec::new();
    for address in &args.safekeepers {
        let resolved = address
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve safekeeper address {address}"))?
            .next()
            .with_context(|| format!("safekeeper address {address} resolves to nothing"))?;
        safekeepers.push(resolved);
    }
    tarn_pages::service::run(
        tarn_pages::service::PageserverConfig {
            timeline_id: args.timeline_id,
            safekeepers,
            dir: args.dir,
            listen: args.listen,
            base: args.base_datadir.zip(args.base_lsn),
            settings: tarn_pages::RedoSettings {
                data_checksums: args.data_checksums,
                wal_log_hints: args.wal_log_hints,
            },
            segment_size_bytes: POSTGRES_SEGMENT_SIZE_BYTES,
            cores: args.cores,
            first_cpu: args.first_cpu,
        },
        shutdown,
    )?;
    Ok(())
}

/// `wal_segment_size` of clusters `tarn up` creates (initdb's default), as the proposer
/// announces it to the safekeepers.
const POSTGRES_SEGMENT_SIZE_BYTES: u64 = tarn_wal::proposer::service::POSTGRES_SEGMENT_SIZE_BYTES;
/// How long `tarn getpage` waits for the pageserver (which itself waits at most 10 s
/// for WAL to arrive).
const GETPAGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long `tarn basebackup` waits for the pageserver between two pieces of the
/// stream (the pageserver itself waits at most 10 s for WAL to arrive).
const BASEBACKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn run_basebackup(args: BasebackupArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tarn_pages::basebackup::{DirectorySink, TarUnpacker};
    use tarn_pages::service::client::PageserverClient;
    use tarn_pages::service::protocol::Response;
    let mut client = PageserverClient::connect(args.pageserver, BASEBACKUP_TIMEOUT)?;
    let timeline = client.timeline_or_default(args.timeline)?;
    let lsn = args.lsn.unwrap_or(Lsn::INVALID);
    let answer = match &args.pgdata {
        Some(dir) => {
            let sink = DirectorySink::create(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut unpacker = TarUnpacker::new(sink);
            let answer = client.basebackup(timeline, lsn, &mut unpacker)?;
            if matches!(answer, Response::BasebackupDone { .. }) {
                unpacker.finish().with_context(|| {
                    format!("cannot unpack the basebackup into {}", dir.display())
                })?;
            }
            answer
        }
        None => {
            let stdout = std::io::stdout();
            anyhow::ensure!(
                !stdout.is_terminal(),
                "the basebackup is a tar stream: redirect stdout to a file (> backup.tar) or pass -D DIR"
            );
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            let answer = client.basebackup(timeline, lsn, &mut out)?;
            out.flush()
                .context("cannot write the basebackup to stdout")?;
            answer
        }
    };
    match answer {
        Response::BasebackupDone { lsn } => {
            match &args.pgdata {
                Some(dir) => eprintln!(
                    "basebackup of timeline {timeline} at {lsn} unpacked into {}",
                    dir.display()
                ),
                None => eprintln!("basebackup of timeline {timeline} at {lsn} written"),
            }
            Ok(())
        }
        Response::Error { code, message } => anyhow::bail!("pageserver: {code:?}: {message}"),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}

fn run_getpage(args: GetpageArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    use tarn_pages::service::client::PageserverClient;
    use tarn_pages::service::protocol::{RelRequest, Request, Response};
    let mut client = PageserverClient::connect(args.pageserver, GETPAGE_TIMEOUT)?;
    let rel_request = RelRequest {
        timeline: client.timeline_or_default(args.timeline)?,
        rel: args.rel,
        fork: args.fork,
        blk: args.block,
        lsn: args.lsn.unwrap_or(Lsn::INVALID),
    };
    let request = if args.size {
        Request::RelSize(rel_request)
    } else {
        Request::GetPage(rel_request)
    };
    match client.call(&request)? {
        Response::Size(blocks) => println!("{blocks}"),
        Response::Page(page) => {
            if let Some(path) = &args.out {
                std::fs::write(path, &page[..])
                    .with_context(|| format!("cannot write {}", path.display()))?;
            } else if args.hex {
                let mut out = std::io::stdout().lock();
                for (index, line) in page.chunks(32).enumerate() {
                    let hex: String = line.iter().map(|b| format!("{b:02x}")).collect();
                    writeln!(out, "{:04x}: {hex}", index * 32)?;
                }
            } else {
                let parsed = tarn_pages::Page::from_bytes(&page[..])
                    .context("the pageserver returned a page of the wrong size")?;
                println!(
                    "pd_lsn {} pd_lower {} pd_upper {} line pointers {}",
                    parsed.lsn(),
                    parsed.lower(),
                    parsed.upper(),
                    parsed.max_offset_number()
                );
            }
        }
        Response::Error { code, message } => anyhow::bail!("pageserver: {code:?}: {message}"),
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    Ok(())
}

fn run_proposer_role(args: ProposerArgs) -> anyhow::Result<()> {
    if args.sync_safekeepers {
        let system_id = args
            .system_id
            .context("--sync-safekeepers needs --system-id")?;
        let end = tarn_wal::proposer::sync_safekeepers(tarn_wal::proposer::SyncConfig {
            safekeepers: args.safekeepers,
            timeline_id: args.timeline_id,
            system_id: tarn_wal::SystemId(system_id),
            segment_size_bytes: POSTGRES_SEGMENT_SIZE_BYTES,
            timeout: std::time::Duration::from_secs(args.sync_timeout_secs),
        })?;
        println!("{end}");
        return Ok(());
    }
    // Streaming, the system id comes from Postgres itself.
    anyhow::ensure!(
        args.system_id.is_none(),
        "--system-id is only for --sync-safekeepers"
    );
    let (Some(postgres), Some(application_name)) = (args.postgres, args.application_name) else {
        anyhow::bail!("--postgres and --application-name are required without --sync-safekeepers");
    };
    tarn_wal::proposer::run(tarn_wal::proposer::ProposerConfig {
        postgres,
        safekeepers: args.safekeepers,
        timeline_id: args.timeline_id,
        application_name,
        state_file: args.state_file,
        timeline_start: args.timeline_start,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_three_safekeeper_ports() {
        assert_eq!(parse_safekeeper_ports("1,2,3"), Ok([1, 2, 3]));
        assert!(parse_safekeeper_ports("1,2").is_err());
        assert!(parse_safekeeper_ports("1,2,x").is_err());
    }

    #[test]
    fn safekeeper_addresses_need_a_port() {
        assert!(parse_host_port("127.0.0.1:5433").is_ok());
        assert!(parse_host_port("sk-1.local:5433").is_ok());
        assert!(parse_host_port("127.0.0.1").is_err());
        assert!(parse_host_port(":5433").is_err());
    }

    #[test]
    fn parses_loadgen_ingest() {
        use tarn_tools::loadgen::ingest::Threshold;
        let cli = Cli::try_parse_from(
            "tarn loadgen ingest --base-datadir /b --controldata /c --wal-dir /w --work-dir /k \
             --rel accounts=1663/5/16384 --rel history=1663/5/16390 --thresholds 4,off \
             --chain-lengths 0,16 --flush-at-bytes 8m"
                .split_whitespace(),
        )
        .expect("parses");
        let Command::Loadgen(LoadgenArgs {
            target: LoadgenTarget::Ingest(args),
        }) = cli.command
        else {
            panic!("not loadgen ingest");
        };
        assert_eq!(args.thresholds, vec![Threshold::Deltas(4), Threshold::Off]);
        assert_eq!(args.chain_lengths, vec![0, 16]);
        assert_eq!(args.chain_threshold, Threshold::Deltas(64));
        assert_eq!(args.rels.len(), 2);
        assert_eq!(args.rels[1].1.rel_node, 16390);
        assert_eq!(args.flush_at_bytes, 8 << 20);
    }

    #[test]
    fn parses_loadgen_getpage() {
        let cli = Cli::try_parse_from([
            "tarn",
            "loadgen",
            "getpage",
            "--pageserver",
            "127.0.0.1:5",
            "--rel",
            "1663/5/16384",
            "--hot-set",
            "0.1",
            "--lsn",
            "historic",
            "--min-lsn",
            "0/1000",
            "--concurrency",
            "4",
            "--pipeline",
            "8",
        ])
        .expect("parses");
        let Command::Loadgen(LoadgenArgs {
            target: LoadgenTarget::Getpage(args),
        }) = cli.command
        else {
            panic!("not loadgen getpage");
        };
        assert_eq!(args.rel.rel_node, 16384);
        assert_eq!((args.concurrency, args.pipeline), (4, 8));
        assert_eq!(args.min_lsn, Some(Lsn(0x1000)));
        // One target, exactly.
        for bad in [
            &["tarn", "loadgen", "getpage", "--rel", "1/2/3"][..],
            &[
                "tarn",
                "loadgen",
                "getpage",
                "--rel",
                "1/2/3",
                "--pageserver",
                "h:1",
                "--pread-file",
                "/x",
            ],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        assert!(
            Cli::try_parse_from([
                "tarn",
                "loadgen",
                "getpage",
                "--rel",
                "1/2/3",
                "--pread-file",
                "/x"
            ])
            .is_ok()
        );
    }

    #[test]
    fn parses_basebackup() {
        let cli = Cli::try_parse_from([
            "tarn",
            "basebackup",
            "--pageserver",
            "127.0.0.1:55436",
            "--lsn",
            "0/3000028",
            "-D",
            "/tmp/backup",
        ])
        .expect("parses");
        let Command::Basebackup(args) = cli.command else {
            panic!("not basebackup");
        };
        assert_eq!(args.lsn, Some(Lsn(0x0300_0028)));
        assert_eq!(args.pgdata, Some(PathBuf::from("/tmp/backup")));
        assert!(args.timeline.is_none());
        assert!(
            Cli::try_parse_from(["tarn", "basebackup"]).is_err(),
            "--pageserver is required"
        );
    }

    #[test]
    fn errors_print_on_one_line() {
        assert_eq!(one_line("a: b\n  c\n\nd\n"), "a: b | c | d");
    }
}
