//! A local, vanilla PostgreSQL 15 cluster: find the binaries, initdb, configure, start,
//! stop, and run psql / pgbench / pg_controldata against it. `tarn up` and the
//! end-to-end tests both manage Postgres through this module.
//!
//! Postgres refuses to run as root, and CI runs as root. When this process is root, the
//! server-side tools (initdb, pg_ctl, pg_controldata) run as the unprivileged `postgres`
//! user that Debian's package creates, and the data directory belongs to that user.
//! Clients (psql, pgbench) run as the caller and connect over TCP to 127.0.0.1 with
//! `-U postgres`; initdb sets up trust authentication.
//!
//! Configuration tarn owns lives in two files included from `postgresql.conf`:
//! `tarn.conf` (written by [`PgCluster::set_settings`]) and `tarn.runtime.conf` (port,
//! listen address and socket directory, written by [`PgCluster::start`]), so that a
//! plain `pg_ctl start -D DATA` starts the cluster exactly as tarn does.

use std::fs;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::command::{self, RunError};
use crate::os::{self, UserIds};
use crate::ports;

/// The only major version tarn speaks (WAL format, pg_control layout, redo).
pub const PG_MAJOR_VERSION: u32 = 15;
/// Where Debian's postgresql-15 package puts the binaries.
pub const DEBIAN_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";
/// Overrides where [`PgBinaries::locate`] looks (a directory holding `postgres`).
pub const BIN_DIR_ENV: &str = "TARN_PG_BIN_DIR";
/// The unprivileged user that runs the server when tarn runs as root.
pub const SERVER_OS_USER: &str = "postgres";
/// The database superuser initdb creates, used by every client connection.
pub const SUPERUSER: &str = "postgres";
/// The address Postgres listens on and clients connect to.
pub const LISTEN_HOST: &str = "127.0.0.1";
/// The port a cluster is assumed to use before it has been started by tarn.
pub const DEFAULT_PORT: u16 = 5432;

const TARN_CONF: &str = "tarn.conf";
const RUNTIME_CONF: &str = "tarn.runtime.conf";
const INCLUDE_MARKER: &str = "# tarn: settings managed by tarn";
const LOG_DIR: &str = "log";
const LOG_FILE: &str = "postgres.log";

/// initdb writes and fsyncs a few MB; minutes mean something is wrong.
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
/// pg_ctl's own wait bound for start (its default is also 60 s): crash recovery of a
/// small test cluster takes seconds.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// pg_ctl's own wait bound for stop. A smart stop waits for clients to disconnect.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time given to pg_ctl beyond its own wait bound before we kill it.
const PG_CTL_MARGIN: Duration = Duration::from_secs(10);
/// For tools that only read a file or print a line (pg_controldata, --version, reload).
const QUICK_TOOL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default bound on one psql invocation. A commit can block forever in Postgres while
/// no synchronous standby is connected; callers expecting long queries pass their own.
pub const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
/// Default bound on one pgbench invocation (benchmarks pass `-T` well below this).
pub const PGBENCH_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// libpq's connect timeout for clients (`PGCONNECT_TIMEOUT`), in seconds.
const CLIENT_CONNECT_TIMEOUT_SECS: &str = "10";

/// Longest socket directory used: sun_path holds 107 bytes and the socket file name
/// `/.s.PGSQL.NNNNN` and its `.lock` sibling need up to 20 of them.
const MAX_SOCKET_DIR_BYTES: usize = 86;
/// Bytes of a child's stderr quoted in an error.
const MAX_STDERR_IN_ERROR_BYTES: usize = 4096;
/// Bytes of SQL quoted in an error.
const MAX_SQL_IN_ERROR_BYTES: usize = 200;
/// Lines of postgres.log quoted when the server fails to start.
const LOG_TAIL_LINES: usize = 20;

/// Environment variables that would silently redirect a libpq client or pg_ctl.
const LIBPQ_ENV_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGOPTIONS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGPASSWORD",
    "PGSSLMODE",
    "PGTARGETSESSIONATTRS",
    "PGDATA",
];

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("PostgreSQL 15 not found: {detail}; run scripts/install-postgres.sh")]
    BinariesNotFound { detail: String },
    #[error(
        "user `postgres` does not exist; tarn runs PostgreSQL as that user when run as root (run scripts/install-postgres.sh)"
    )]
    ServerUserMissing,
    #[error("cannot look up user `postgres`: {0}")]
    ServerUserLookup(io::Error),
    #[error(
        "the postgres user cannot reach {path}: {blocking_dir} (mode {mode:o}) is not searchable by it; use a directory it can reach, e.g. under /tmp or /var/lib"
    )]
    PathNotReachable {
        path: PathBuf,
        blocking_dir: PathBuf,
        mode: u32,
    },
    #[error("{path} is not a PostgreSQL data directory (no PG_VERSION)")]
    NotADataDirectory { path: PathBuf },
    #[error("{path} holds a PostgreSQL {found} data directory; tarn needs PostgreSQL 15")]
    WrongVersion { path: PathBuf, found: String },
    #[error("port {port} is in use")]
    PortInUse { port: u16 },
    #[error("cannot check whether port {port} is free: {source}")]
    PortCheck { port: u16, source: io::Error },
    #[error("postgres is already running in {data_dir} (pid {pid})")]
    AlreadyRunning { data_dir: PathBuf, pid: u32 },
    #[error("invalid setting {name} = {value:?}: {reason}")]
    InvalidSetting {
        name: String,
        value: String,
        reason: &'static str,
    },
    #[error("{what}: {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: cannot run `{command}`: {source}")]
    Spawn {
        what: String,
        command: String,
        source: io::Error,
    },
    #[error("{what}: `{command}` did not finish within {} s and was killed", timeout.as_secs())]
    TimedOut {
        what: String,
        command: String,
        timeout: Duration,
    },
    #[error("{what}: `{command}` failed ({status}): {stderr}")]
    CommandFailed {
        what: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{what}: unexpected output from `{command}`: {output:?}")]
    UnexpectedOutput {
        what: String,
        command: String,
        output: String,
    },
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> PostgresError + 'a {
    move |source| PostgresError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where the PostgreSQL 15 programs are.
#[derive(Clone, Debug)]
pub struct PgBinaries {
    pub bin_dir: PathBuf,
}

impl PgBinaries {
    /// Finds PostgreSQL 15: `$TARN_PG_BIN_DIR` if set, else Debian's
    /// `/usr/lib/postgresql/15/bin`, else `pg_config --bindir` if `pg_config` is 15.
    pub fn locate() -> Result<Self, PostgresError> {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
            return Self::at(PathBuf::from(dir));
        }
        let debian = Path::new(DEBIAN_BIN_DIR);
        if debian.join("postgres").is_file() {
            return Self::at(debian.to_path_buf());
        }
        match pg_config_bin_dir() {
            Some(dir) => Self::at(dir),
            None => Err(PostgresError::BinariesNotFound {
                detail: format!(
                    "no {DEBIAN_BIN_DIR}/postgres and no pg_config for version 15 on PATH"
                ),
            }),
        }
    }

    /// Uses the binaries in `bin_dir`, after checking that `postgres` there is 15.
    pub fn at(bin_dir: PathBuf) -> Result<Self, PostgresError> {
        let postgres = bin_dir.join("postgres");
        if !postgres.is_file() {
            return Err(PostgresError::BinariesNotFound {
                detail: format!("no {}", postgres.display()),
            });
        }
        let mut version_command = Command::new(&postgres);
        version_command.arg("--version").env("LC_ALL", "C");
        let output = run(
            &mut version_command,
            None,
            QUICK_TOOL_TIMEOUT,
            "postgres --version",
        )?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        match major_version_in(&text) {
            Some(PG_MAJOR_VERSION) => Ok(Self { bin_dir }),
            _ => Err(PostgresError::BinariesNotFound {
                detail: format!("{} is {:?}", postgres.display(), text.trim()),
            }),
        }
    }

    /// Path of one PostgreSQL program, e.g. `tool("pg_ctl")`.
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }
}

/// The major version in "... (PostgreSQL) 15.18 ..." or "PostgreSQL 15.18 ...".
fn major_version_in(version_line: &str) -> Option<u32> {
    let after = version_line.split("PostgreSQL").nth(1)?;
    let after = after.trim_start_matches(')').trim_start();
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn pg_config_bin_dir() -> Option<PathBuf> {
    let query = |flag: &str| -> Option<String> {
        let mut pg_config = Command::new("pg_config");
        pg_config.arg(flag).env("LC_ALL", "C");
        let output = command::run_with_deadline(&mut pg_config, None, QUICK_TOOL_TIMEOUT).ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    (major_version_in(&query("--version")?)? == PG_MAJOR_VERSION)
        .then(|| query("--bindir").map(PathBuf::from))
        .flatten()
}

/// How to stop the server (`pg_ctl stop -m`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    /// Wait for clients to disconnect, then shut down cleanly.
    Smart,
    /// Disconnect clients, then shut down cleanly (shutdown checkpoint).
    Fast,
    /// Quit at once; the next start runs crash recovery.
    Immediate,
}

impl StopMode {
    fn pg_ctl_name(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// One PostgreSQL 15 data directory and the server that may be running on it.
///
/// Dropping a `PgCluster` that started a server which is still running stops that server
/// in immediate mode: tests and `tarn up` never leave servers behind.
#[derive(Debug)]
pub struct PgCluster {
    bins: PgBinaries,
    data_dir: PathBuf,
    port: u16,
    /// Set when Postgres runs as `postgres` because we are root.
    server_user: Option<UserIds>,
    /// This handle started the server and has not seen it stop.
    started_here: bool,
}

impl PgCluster {
    /// Creates a new cluster in `data_dir` (created if missing; must be empty) with
    /// `initdb -A trust -U postgres -E UTF8 --locale=C`.
    pub fn init(bins: &PgBinaries, data_dir: &Path) -> Result<Self, PostgresError> {
        let server_user = server_user()?;
        if let Some(user) = server_user {
            // Before creating anything: a directory postgres cannot use is not left behind.
            let absolute = std::path::absolute(data_dir)
                .map_err(io_error("cannot resolve data directory", data_dir))?;
            ensure_reachable(&absolute, user)?;
        }
        fs::create_dir_all(data_dir).map_err(io_error("cannot create data directory", data_dir))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_error("cannot resolve data directory", data_dir))?;
        if let Some(user) = server_user {
            ensure_reachable(&data_dir, user)?;
            chown(&data_dir, Some(user.uid), Some(user.gid)).map_err(io_error(
                "cannot give the data directory to postgres",
                &data_dir,
            ))?;
        }
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .map_err(io_error("cannot set data directory permissions", &data_dir))?;

        let mut cluster = Self {
            bins: bins.clone(),
            data_dir,
            port: DEFAULT_PORT,
            server_user,
            started_here: false,
        };
        let mut initdb = cluster.server_command("initdb");
        initdb
            .arg("-D")
            .arg(&cluster.data_dir)
            .args(["-A", "trust", "-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .arg("--no-instructions");
        run_checked(&mut initdb, None, INITDB_TIMEOUT, "initdb")?;
        cluster.prepare_tarn_files()?;
        cluster.port = cluster.configured_port();
        Ok(cluster)
    }

    /// Opens an existing PostgreSQL 15 data directory without changing it. The port is
    /// the one tarn last started it on, or [`DEFAULT_PORT`].
    pub fn open(bins: &PgBinaries, data_dir: &Path) -> Result<Self, PostgresError> {
        let version_file = data_dir.join("PG_VERSION");
        let version = match fs::read_to_string(&version_file) {
            Ok(version) => version.trim().to_string(),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(PostgresError::NotADataDirectory {
                    path: data_dir.to_path_buf(),
                });
            }
            Err(error) => return Err(io_error("cannot read", &version_file)(error)),
        };
        if version != PG_MAJOR_VERSION.to_string() {
            return Err(PostgresError::WrongVersion {
                path: data_dir.to_path_buf(),
                found: version,
            });
        }
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_error("cannot resolve data directory", data_dir))?;
        let mut cluster = Self {
            bins: bins.clone(),
            server_user: server_user()?,
            data_dir,
            port: DEFAULT_PORT,
            started_here: false,
        };
        cluster.port = cluster.configured_port();
        Ok(cluster)
    }

    /// Replaces tarn's settings (in `tarn.conf`) with `settings`. Values are written
    /// quoted, so pass them bare: `("wal_keep_size", "1GB")`. Takes effect at the next
    /// start, or at [`PgCluster::reload`] for settings Postgres can reload.
    pub fn set_settings(&self, settings: &[(&str, &str)]) -> Result<(), PostgresError> {
        let mut text = String::from(
            "# Written by tarn (PgCluster::set_settings); replaced on every change.\n",
        );
        for (name, value) in settings {
            text.push_str(&setting_line(name, value)?);
        }
        self.prepare_tarn_files()?;
        self.write_conf(TARN_CONF, &text)
    }

    /// Asks the running server to re-read its configuration (`pg_ctl reload`).
    pub fn reload(&self) -> Result<(), PostgresError> {
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl.arg("reload").arg("-s").arg("-D").arg(&self.data_dir);
        run_checked(&mut pg_ctl, None, QUICK_TOOL_TIMEOUT, "pg_ctl reload")?;
        Ok(())
    }

    /// Starts the server on 127.0.0.1:`port` and waits until it accepts connections.
    /// Fails with "port N is in use" before touching anything if the port is taken.
    pub fn start(&mut self, port: u16) -> Result<(), PostgresError> {
        if let Some(pid) = self.postmaster_pid() {
            return Err(PostgresError::AlreadyRunning {
                data_dir: self.data_dir.clone(),
                pid,
            });
        }
        match ports::port_is_free(port) {
            Ok(true) => {}
            Ok(false) => return Err(PostgresError::PortInUse { port }),
            Err(source) => return Err(PostgresError::PortCheck { port, source }),
        }
        let socket_dir = if self.data_dir.as_os_str().len() <= MAX_SOCKET_DIR_BYTES {
            self.data_dir.to_string_lossy().into_owned()
        } else {
            // TCP is what every tarn client uses; a path too long for a socket only
            // costs the Unix socket.
            tracing::info!(
                data_dir = %self.data_dir.display(),
                "data directory path too long for a Unix socket; listening on TCP only"
            );
            String::new()
        };
        let port_text = port.to_string();
        let mut runtime = String::from("# Written by tarn (PgCluster::start) on every start.\n");
        runtime.push_str(&setting_line("port", &port_text)?);
        runtime.push_str(&setting_line("listen_addresses", LISTEN_HOST)?);
        runtime.push_str(&setting_line("unix_socket_directories", &socket_dir)?);
        self.prepare_tarn_files()?;
        self.write_conf(RUNTIME_CONF, &runtime)?;
        self.port = port;

        let mut pg_ctl = self.start_command();
        // pg_ctl puts the postmaster in a session of its own; its own process group
        // keeps a terminal's Ctrl-C from reaching pg_ctl itself.
        pg_ctl.process_group(0);
        let what = format!("starting postgres on port {port}");
        match run_checked(&mut pg_ctl, None, START_TIMEOUT + PG_CTL_MARGIN, &what) {
            Ok(_) => {
                self.started_here = true;
                Ok(())
            }
            Err(error) => {
                // pg_ctl may give up waiting while the server keeps starting.
                if self.is_running() {
                    let _ = self.stop(StopMode::Immediate);
                }
                Err(self.with_log_tail(error))
            }
        }
    }

    /// The command that starts this cluster as tarn does (`pg_ctl start -w`), as the
    /// right user. Recorded by `tarn up` so that tests can restart a killed Postgres.
    pub fn start_argv(&self) -> Vec<String> {
        let pg_ctl = self.start_command();
        let mut argv = Vec::new();
        if self.server_user.is_some() {
            argv.extend(["runuser", "-u", SERVER_OS_USER, "--"].map(String::from));
        }
        argv.push(pg_ctl.get_program().to_string_lossy().into_owned());
        argv.extend(pg_ctl.get_args().map(|a| a.to_string_lossy().into_owned()));
        argv
    }

    fn start_command(&self) -> Command {
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl
            .arg("start")
            .arg("-w")
            .arg("-s")
            .arg("-t")
            .arg(START_TIMEOUT.as_secs().to_string())
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_path());
        pg_ctl
    }

    /// Stops the server (`pg_ctl stop -m MODE -w`) with the default bound. Stopping a
    /// server that is not running succeeds.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), PostgresError> {
        self.stop_within(mode, STOP_TIMEOUT)
    }

    /// Like [`PgCluster::stop`], waiting at most `timeout` for the server to go away.
    pub fn stop_within(&mut self, mode: StopMode, timeout: Duration) -> Result<(), PostgresError> {
        if !self.is_running() {
            self.started_here = false;
            return Ok(());
        }
        let mut pg_ctl = self.server_command("pg_ctl");
        pg_ctl
            .arg("stop")
            .arg("-w")
            .arg("-s")
            .arg("-m")
            .arg(mode.pg_ctl_name())
            .arg("-t")
            .arg(timeout.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.data_dir);
        let what = format!("stopping postgres ({} mode)", mode.pg_ctl_name());
        let result = run_checked(&mut pg_ctl, None, timeout + PG_CTL_MARGIN, &what);
        // The server may have exited on its own while pg_ctl was signalling it.
        if result.is_ok() || !self.is_running() {
            self.started_here = false;
            return Ok(());
        }
        result.map(|_| ())
    }

    /// Leaves a server this handle started running when the handle is dropped (an
    /// endpoint's Postgres outlives the command that started it).
    pub fn detach(&mut self) {
        self.started_here = false;
    }

    /// True if the postmaster recorded in `postmaster.pid` is alive.
    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    /// The postmaster's pid from `postmaster.pid`, if that process is alive and is a
    /// postgres (a stale file after a crash names a dead or reused pid).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: u32 = text.lines().next()?.trim().parse().ok()?;
        if !os::process_is_alive(pid) {
            return None;
        }
        match os::process_name(pid) {
            Some(name) if name != "postgres" && name != "postmaster" => None,
            _ => Some(pid),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// libpq connection string for the `postgres` database as the superuser.
    pub fn connstring(&self) -> String {
        format!(
            "host={LISTEN_HOST} port={} user={SUPERUSER} dbname=postgres",
            self.port
        )
    }

    /// Runs `sql` in the `postgres` database; see [`PgCluster::psql_db`].
    pub fn psql(&self, sql: &str) -> Result<String, PostgresError> {
        self.psql_db("postgres", sql)
    }

    /// Runs `sql` (any number of statements, as a psql script) in database `db` with
    /// `psql -XAtq -v ON_ERROR_STOP=1` and returns its stdout, trimmed: one line per
    /// row, columns separated by `|`. Bounded by [`PSQL_TIMEOUT`].
    pub fn psql_db(&self, db: &str, sql: &str) -> Result<String, PostgresError> {
        self.psql_with_timeout(db, sql, PSQL_TIMEOUT)
    }

    /// [`PgCluster::psql_db`] with an explicit bound; the psql process is killed when it
    /// passes (e.g. a commit waiting for a synchronous standby that never comes).
    pub fn psql_with_timeout(
        &self,
        db: &str,
        sql: &str,
        timeout: Duration,
    ) -> Result<String, PostgresError> {
        let mut psql = self.client_command("psql");
        psql.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-d", db, "-f", "-"]);
        let what = format!("psql on {db}: {}", abbreviate(sql, MAX_SQL_IN_ERROR_BYTES));
        let output = run_checked(&mut psql, Some(sql.as_bytes().to_vec()), timeout, &what)?;
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Runs `pgbench -h 127.0.0.1 -p PORT -U postgres ARGS...` against database
    /// `postgres` unless ARGS end with another; a non-zero exit is an error carrying its
    /// stderr. Bounded by [`PGBENCH_TIMEOUT`].
    pub fn pgbench(&self, args: &[&str]) -> Result<Output, PostgresError> {
        self.pgbench_with_timeout(args, PGBENCH_TIMEOUT)
    }

    /// [`PgCluster::pgbench`] with an explicit bound.
    pub fn pgbench_with_timeout(
        &self,
        args: &[&str],
        timeout: Duration,
    ) -> Result<Output, PostgresError> {
        let mut pgbench = self.client_command("pgbench");
        // pgbench takes its database as a trailing argument, defaulting to the OS user's
        // name; default to `postgres` instead (a trailing argument still wins).
        pgbench.env("PGDATABASE", "postgres").args(args);
        let what = format!("pgbench {}", args.join(" "));
        run_checked(&mut pgbench, None, timeout, &what)
    }

    /// `pg_controldata` as a map of its "name: value" lines.
    pub fn controldata(&self) -> Result<std::collections::BTreeMap<String, String>, PostgresError> {
        let mut pg_controldata = self.server_command("pg_controldata");
        pg_controldata.arg("-D").arg(&self.data_dir);
        let output = run_checked(
            &mut pg_controldata,
            None,
            QUICK_TOOL_TIMEOUT,
            "reading pg_control",
        )?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
            .collect())
    }

    /// The database system identifier from `pg_control` (what IDENTIFY_SYSTEM returns).
    pub fn system_id(&self) -> Result<u64, PostgresError> {
        let mut pg_controldata = self.server_command("pg_controldata");
        pg_controldata.arg("-D").arg(&self.data_dir);
        let what = "reading the system identifier";
        let output = run_checked(&mut pg_controldata, None, QUICK_TOOL_TIMEOUT, what)?;
        let text = String::from_utf8_lossy(&output.stdout);
        text.lines()
            .find_map(|line| line.strip_prefix("Database system identifier:"))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| PostgresError::UnexpectedOutput {
                what: what.to_string(),
                command: command::describe(&pg_controldata),
                output: abbreviate(&text, MAX_STDERR_IN_ERROR_BYTES),
            })
    }

    /// The server's log file (stdout and stderr of the postmaster).
    pub fn log_path(&self) -> PathBuf {
        self.data_dir.join(LOG_DIR).join(LOG_FILE)
    }

    /// The last lines of the server log, for error messages and test failures.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_lines(&self.log_path(), lines)
    }

    /// A command for a program that touches the data directory as the server does:
    /// run as the `postgres` user when we are root, from `/`, in the C locale.
    fn server_command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bins.tool(tool));
        command.current_dir("/").env("LC_ALL", "C");
        for var in LIBPQ_ENV_VARS {
            command.env_remove(var);
        }
        if let Some(user) = self.server_user {
            command.uid(user.uid).gid(user.gid);
        }
        command
    }

    /// A client command (psql, pgbench) aimed at this server over TCP.
    fn client_command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bins.tool(tool));
        command.env("LC_ALL", "C").env("PGCLIENTENCODING", "UTF8");
        for var in LIBPQ_ENV_VARS {
            command.env_remove(var);
        }
        command
            .env("PGCONNECT_TIMEOUT", CLIENT_CONNECT_TIMEOUT_SECS)
            .args([
                "-h",
                LISTEN_HOST,
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ]);
        command
    }

    /// Makes `postgresql.conf` include tarn's files and creates the log directory.
    fn prepare_tarn_files(&self) -> Result<(), PostgresError> {
        let conf_path = self.data_dir.join("postgresql.conf");
        let conf = fs::read_to_string(&conf_path).map_err(io_error("cannot read", &conf_path))?;
        if !conf.contains(INCLUDE_MARKER) {
            let mut appended = conf;
            if !appended.ends_with('\n') {
                appended.push('\n');
            }
            appended.push_str(&format!(
                "\n{INCLUDE_MARKER} (later files win)\ninclude_if_exists = '{TARN_CONF}'\ninclude_if_exists = '{RUNTIME_CONF}'\n"
            ));
            self.write_owned_file(&conf_path, &appended)?;
        }
        self.ensure_log_dir()
    }

    fn ensure_log_dir(&self) -> Result<(), PostgresError> {
        let log_dir = self.data_dir.join(LOG_DIR);
        fs::create_dir_all(&log_dir).map_err(io_error("cannot create log directory", &log_dir))?;
        if let Some(user) = self.server_user {
            chown(&log_dir, Some(user.uid), Some(user.gid)).map_err(io_error(
                "cannot give the log directory to postgres",
                &log_dir,
            ))?;
        }
        Ok(())
    }

    /// The port in `tarn.runtime.conf`, i.e. the one tarn last started this cluster on.
    fn configured_port(&self) -> u16 {
        fs::read_to_string(self.data_dir.join(RUNTIME_CONF))
            .ok()
            .and_then(|text| {
                text.lines().find_map(|line| {
                    let (name, value) = line.split_once('=')?;
                    (name.trim() == "port")
                        .then(|| value.trim().trim_matches('\'').parse().ok())
                        .flatten()
                })
            })
            .unwrap_or(DEFAULT_PORT)
    }

    fn write_conf(&self, file_name: &str, text: &str) -> Result<(), PostgresError> {
        self.write_owned_file(&self.data_dir.join(file_name), text)
    }

    /// Replaces `path` atomically (temporary file + rename) with a file owned by the
    /// server's user, so Postgres never reads half a configuration file.
    fn write_owned_file(&self, path: &Path, text: &str) -> Result<(), PostgresError> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tarn-tmp");
        let temporary = PathBuf::from(temporary);
        fs::write(&temporary, text).map_err(io_error("cannot write", &temporary))?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o600))
            .map_err(io_error("cannot set permissions of", &temporary))?;
        if let Some(user) = self.server_user {
            chown(&temporary, Some(user.uid), Some(user.gid))
                .map_err(io_error("cannot give to postgres", &temporary))?;
        }
        fs::rename(&temporary, path).map_err(io_error("cannot replace", path))
    }

    fn with_log_tail(&self, error: PostgresError) -> PostgresError {
        match error {
            PostgresError::CommandFailed {
                what,
                command,
                status,
                stderr,
            } => PostgresError::CommandFailed {
                what,
                command,
                status,
                stderr: format!(
                    "{stderr}\nlast lines of {}:\n{}",
                    self.log_path().display(),
                    self.log_tail(LOG_TAIL_LINES)
                ),
            },
            other => other,
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.started_here || !self.is_running() {
            return;
        }
        if let Err(error) = self.stop(StopMode::Immediate) {
            tracing::error!(
                data_dir = %self.data_dir.display(),
                "could not stop postgres: {error}"
            );
        }
    }
}

/// The user the server runs as: `Some(postgres)` when we are root, else `None` (the
/// server runs as us).
/// The user Postgres runs as: `postgres` when we are root, else ourselves (`None`).
pub(crate) fn server_user() -> Result<Option<UserIds>, PostgresError> {
    if !os::is_root() {
        return Ok(None);
    }
    match os::lookup_user(SERVER_OS_USER) {
        Ok(Some(user)) => Ok(Some(user)),
        Ok(None) => Err(PostgresError::ServerUserMissing),
        Err(error) => Err(PostgresError::ServerUserLookup(error)),
    }
}

/// Checks that `user` (with only its primary group: std drops supplementary groups when
/// it switches user) can search every existing directory above `path`.
fn ensure_reachable(path: &Path, user: UserIds) -> Result<(), PostgresError> {
    use std::os::unix::fs::MetadataExt;
    for ancestor in path.ancestors().skip(1) {
        let metadata = match fs::metadata(ancestor) {
            Ok(metadata) => metadata,
            // Not created yet: create_dir_all will make it searchable (umask permitting;
            // checked again once it exists).
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io_error("cannot inspect", ancestor)(error)),
        };
        let mode = metadata.mode();
        let searchable = mode & 0o001 != 0
            || (metadata.uid() == user.uid && mode & 0o100 != 0)
            || (metadata.gid() == user.gid && mode & 0o010 != 0);
        if !searchable {
            return Err(PostgresError::PathNotReachable {
                path: path.to_path_buf(),
                blocking_dir: ancestor.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// `name = 'value'` for a Postgres configuration file, with the value quoted.
fn setting_line(name: &str, value: &str) -> Result<String, PostgresError> {
    let invalid = |reason| PostgresError::InvalidSetting {
        name: name.to_string(),
        value: value.to_string(),
        reason,
    };
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.');
    if !name_ok {
        return Err(invalid("names are lowercase letters, digits, '_' and '.'"));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(invalid("values cannot contain line breaks or NUL"));
    }
    Ok(format!("{name} = '{}'\n", value.replace('\'', "''")))
}

/// Runs `command` within `timeout`, mapping failures to [`PostgresError`].
fn run(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    what: &str,
) -> Result<Output, PostgresError> {
    command::run_with_deadline(command, stdin, timeout).map_err(|error| match error {
        RunError::Spawn(source) | RunError::Wait(source) => PostgresError::Spawn {
            what: what.to_string(),
            command: command::describe(command),
            source,
        },
        RunError::TimedOut => PostgresError::TimedOut {
            what: what.to_string(),
            command: command::describe(command),
            timeout,
        },
    })
}

/// [`run`], and a non-zero exit is an error carrying the child's stderr.
fn run_checked(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    what: &str,
) -> Result<Output, PostgresError> {
    let output = run(command, stdin, timeout, what)?;
    if output.status.success() {
        return Ok(output);
    }
    let mut stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if stderr.is_empty() {
        stderr = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    Err(PostgresError::CommandFailed {
        what: what.to_string(),
        command: command::describe(command),
        status: output.status.to_string(),
        stderr: abbreviate_tail(&stderr, MAX_STDERR_IN_ERROR_BYTES),
    })
}

/// The first `max_bytes` of `text` (on a char boundary), marked when cut.
fn abbreviate(text: &str, max_bytes: usize) -> String {
    let text = text.trim();
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut end = max_bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// The last `max_bytes` of `text`: the end of a tool's stderr says what finally failed.
fn abbreviate_tail(text: &str, max_bytes: usize) -> String {
    if text.len() <= max_bytes {
        return text.to_string();
    }
    let mut start = text.len() - max_bytes;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// Bytes read from the end of a log file to find its last lines.
const LOG_TAIL_READ_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn tail_lines(path: &Path, lines: usize) -> String {
    let Ok(mut file) = fs::File::open(path) else {
        return String::new();
    };
    let length = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_READ_BYTES)))
        .is_err()
    {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file
        .take(LOG_TAIL_READ_BYTES)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_major_versions() {
        assert_eq!(
            major_version_in("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            Some(15)
        );
        assert_eq!(major_version_in("PostgreSQL 16.2"), Some(16));
        assert_eq!(major_version_in("something else"), None);
    }

    #[test]
    fn quotes_setting_values() {
        assert_eq!(
            setting_line("synchronous_standby_names", "tarn_proposer").ok(),
            Some("synchronous_standby_names = 'tarn_proposer'\n".to_string())
        );
        assert_eq!(
            setting_line("application_name", "it's").ok(),
            Some("application_name = 'it''s'\n".to_string())
        );
        assert!(setting_line("Bad Name", "x").is_err());
        assert!(setting_line("port", "1\n2").is_err());
    }

    #[test]
    fn abbreviates_on_char_boundaries() {
        assert_eq!(abbreviate("héllo", 2), "h...");
        assert_eq!(abbreviate_tail("héllo", 4), "...llo");
        assert_eq!(abbreviate("short", 10), "short");
    }
}
