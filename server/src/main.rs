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
use tarn_wal::{NodeId, TimelineId};

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
    #[arg(long)]
    postgres: String,
    /// Safekeeper addresses (host:port), comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_host_port)]
    safekeepers: Vec<String>,
    /// The tarn timeline id (32 hex digits).
    #[arg(long)]
    timeline_id: TimelineId,
    /// application_name to connect with (named in synchronous_standby_names).
    #[arg(long)]
    application_name: String,
    /// Where the proposer writes its state for `tarn status`.
    #[arg(long)]
    state_file: Option<PathBuf>,
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
            if let Err(message) = up::validate_ports(args.port, &safekeeper_ports) {
                usage_error(&message);
            }
            up::run(up::UpOptions {
                dir: args.dir,
                postgres_port: args.port,
                safekeeper_ports,
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
        Command::Loadgen(LoadgenArgs {
            target: LoadgenTarget::Wal(args),
        }) => run_wal_loadgen(args),
    }
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

fn run_proposer_role(args: ProposerArgs) -> anyhow::Result<()> {
    tarn_wal::proposer::run(tarn_wal::proposer::ProposerConfig {
        postgres: args.postgres,
        safekeepers: args.safekeepers,
        timeline_id: args.timeline_id,
        application_name: args.application_name,
        state_file: args.state_file,
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
    fn errors_print_on_one_line() {
        assert_eq!(one_line("a: b\n  c\n\nd\n"), "a: b | c | d");
    }
}
