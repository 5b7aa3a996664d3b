//! Harness for tarn's end-to-end tests: free ports, temporary directories the `postgres`
//! user can use, PostgreSQL 15, the built `tarn` binary, and a `tarn up` run in the
//! background.
//!
//! Everything a test starts must be stopped by the test: [`TarnUp`] and
//! [`PgCluster`](tarn_server::postgres::PgCluster) stop what they started when dropped.
//! Declare a [`TempDir`] before the things that live in it, so that they are dropped
//! (stopped) first. Waits are bounded polls ([`wait_for`]), never bare sleeps.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod pgdata;
pub mod sql;

pub use sql::{Row, SqlConnection, SqlError};
pub use tarn_server::layout::ClusterLayout;
pub use tarn_server::manifest::{ClusterManifest, ComponentRecord};
pub use tarn_server::postgres::{PgBinaries, PgCluster, PostgresError, StopMode};

/// Set this environment variable to keep test directories (and their logs).
pub const KEEP_DIRS_ENV: &str = "TARN_KEEP_TEST_DIRS";
/// Where per-port lock files live, shared by every test process on the machine.
const PORT_LOCK_DIR: &str = "/tmp/tarn-test-ports";
/// Attempts at finding free ports before giving up.
const MAX_PORT_ATTEMPTS: usize = 1000;
/// Interval between polls in [`wait_for`].
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on one `tarn` CLI invocation through [`run_tarn`].
pub const TARN_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on `tarn up` becoming ready (initdb, 3 safekeepers, Postgres, proposer).
pub const TARN_UP_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Bound on `tarn up` stopping after SIGTERM (Postgres fast stop is bounded at 30 s,
/// each other component at 10 s).
pub const TARN_UP_STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// PostgreSQL 15's binaries; panics with the install hint if they are missing.
pub fn pg() -> PgBinaries {
    PgBinaries::locate().unwrap_or_else(|error| panic!("{error}"))
}

/// A port on 127.0.0.1 that nothing listens on and that no other test (in this process
/// or any other) has been handed.
pub fn free_port() -> u16 {
    free_port_range(1)
}

/// The first of `count` consecutive free ports, reserved as by [`free_port`]. Ports
/// come from below the kernel's ephemeral range, so outgoing connections (psql, ...)
/// never take them in the meantime.
pub fn free_port_range(count: u16) -> u16 {
    assert!(count > 0, "free_port_range needs at least one port");
    let (low, high) = candidate_port_range();
    let mut random = seed();
    for _ in 0..MAX_PORT_ATTEMPTS {
        random ^= random << 13;
        random ^= random >> 7;
        random ^= random << 17;
        let span = u64::from(high - low).saturating_sub(u64::from(count));
        let Ok(base) = u16::try_from(u64::from(low) + random % span.max(1)) else {
            continue;
        };
        if let Some(base) = reserve_ports(base, count) {
            return base;
        }
    }
    panic!(
        "found no {count} consecutive free ports in {low}..{high} after {MAX_PORT_ATTEMPTS} attempts"
    );
}

/// Ports below the ephemeral range (`ip_local_port_range`), above the well-known ones.
fn candidate_port_range() -> (u16, u16) {
    const LOWEST: u16 = 10_000;
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOWEST + 1000 {
        (LOWEST, ephemeral_low)
    } else {
        (LOWEST, u16::MAX)
    }
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let calls = CALLS.fetch_add(1, Ordering::Relaxed);
    (nanos ^ (u64::from(std::process::id()) << 32) ^ calls.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1
}

/// Reserves `base..base+count` if each port is bindable and unclaimed: claims are a
/// set in this process plus a flock on `/tmp/tarn-test-ports/PORT` held until the
/// process exits, so parallel test processes (nextest) never share a port.
fn reserve_ports(base: u16, count: u16) -> Option<u16> {
    static CLAIMED: OnceLock<Mutex<(HashSet<u16>, Vec<File>)>> = OnceLock::new();
    let claimed = CLAIMED.get_or_init(Default::default);
    let mut claimed = claimed
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let ports: Vec<u16> = (0..count)
        .map(|i| base.checked_add(i))
        .collect::<Option<_>>()?;
    if ports.iter().any(|port| claimed.0.contains(port)) {
        return None;
    }
    let _ = fs::create_dir_all(PORT_LOCK_DIR);
    let _ = fs::set_permissions(PORT_LOCK_DIR, fs::Permissions::from_mode(0o1777));
    let mut locks = Vec::new();
    for port in &ports {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Path::new(PORT_LOCK_DIR).join(port.to_string()))
            .ok()?;
        // SAFETY: flock on a descriptor we own has no memory effects.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return None;
        }
        locks.push(lock);
    }
    // Binding proves nothing listens there now; the listeners close at once.
    let listeners: Vec<TcpListener> = ports
        .iter()
        .map(|port| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, *port)).ok())
        .collect::<Option<_>>()?;
    drop(listeners);
    claimed.0.extend(&ports);
    claimed.1.extend(locks);
    Some(base)
}

/// A directory under /tmp for one test, removed when dropped unless
/// `TARN_KEEP_TEST_DIRS` is set. It is searchable by everyone, so the `postgres` user
/// can reach data directories created inside it.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `/tmp/tarn-<name>-<pid>-<n>` (kept short: Unix socket paths are limited).
    pub fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = PathBuf::from(format!("/tmp/tarn-{name}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path)
                .unwrap_or_else(|error| panic!("cannot clear stale {}: {error}", path.display()));
        }
        fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|error| panic!("cannot chmod {}: {error}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os(KEEP_DIRS_ENV).is_some() {
            eprintln!("keeping {} ({KEEP_DIRS_ENV} is set)", self.path.display());
            return;
        }
        if thread::panicking() {
            eprintln!(
                "removing {} of a failed test; set {KEEP_DIRS_ENV}=1 to keep it",
                self.path.display()
            );
        }
        if let Err(error) = fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {error}", self.path.display());
        }
    }
}

/// The `tarn` binary built next to this test executable (`target/<profile>/tarn`).
/// Panics, saying to build it, when it is missing: cargo builds a package's own binaries
/// for its tests, but `tarn` belongs to `tarn-server`.
pub fn tarn_binary() -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|error| panic!("cannot find test executable: {error}"));
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()));
    let tarn = profile_dir.join("tarn");
    assert!(
        tarn.is_file(),
        "the tarn binary is missing at {}: run `cargo build --bin tarn` first",
        tarn.display()
    );
    tarn
}

/// Polls `probe` until it returns `Some`, for at most `timeout`; panics naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// Runs `tarn ARGS...` to completion (bounded by [`TARN_COMMAND_TIMEOUT`]: on overrun it
/// is sent SIGTERM, then SIGKILL, and the test panics).
pub fn run_tarn(args: &[&str]) -> Output {
    let mut child = Command::new(tarn_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run tarn {args:?}: {error}"));
    let stdout = child.stdout.take().map(read_in_background);
    let stderr = child.stderr.take().map(read_in_background);
    let status = match wait_child(&mut child, TARN_COMMAND_TIMEOUT) {
        Some(status) => status,
        None => {
            terminate(&mut child, TARN_UP_STOP_TIMEOUT);
            panic!("tarn {args:?} did not finish within {TARN_COMMAND_TIMEOUT:?}");
        }
    };
    let collect = |reader: Option<thread::JoinHandle<Vec<u8>>>| {
        reader
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default()
    };
    Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    }
}

fn read_in_background(
    mut pipe: impl std::io::Read + Send + 'static,
) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Waits for `child` to exit for at most `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(POLL_INTERVAL),
            Err(error) => panic!("cannot wait for child {}: {error}", child.id()),
        }
    }
}

/// Sends SIGTERM to `child`, waits up to `grace`, then SIGKILLs it. Returns its status.
pub fn terminate(child: &mut Child, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    send_signal(child.id(), libc::SIGTERM);
    if let Some(status) = wait_child(child, grace) {
        return status;
    }
    eprintln!(
        "pid {} ignored SIGTERM for {grace:?}; killing it",
        child.id()
    );
    let _ = child.kill();
    child
        .wait()
        .unwrap_or_else(|error| panic!("cannot reap child {}: {error}", child.id()))
}

/// Sends `signal` to process `pid` (a real pid: 0 and "all processes" are refused).
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .unwrap_or_else(|| panic!("refusing to signal pid {pid}"));
    // SAFETY: kill has no memory-safety preconditions; pid > 0 names a single process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// A `tarn up` running in the background for one test. Dropping it stops the cluster
/// (SIGTERM, bounded wait, then SIGKILL).
pub struct TarnUp {
    child: Child,
    layout: ClusterLayout,
    stderr_path: PathBuf,
    /// The connection line `tarn up` printed (`psql "host=... port=... user=postgres"`).
    pub connect_line: String,
}

impl TarnUp {
    /// Runs `tarn up --dir DIR ARGS...` and waits until it reports the cluster ready
    /// (it prints the `psql` connection line once the proposer is Postgres's synchronous
    /// standby). On failure or timeout returns `tarn up`'s stderr; nothing is left running.
    pub fn start(dir: &Path, args: &[&str]) -> Result<TarnUp, String> {
        fs::create_dir_all(dir)
            .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
        let stderr_path = dir.with_extension("tarn-up.stderr");
        let stderr = File::create(&stderr_path)
            .map_err(|error| format!("cannot create {}: {error}", stderr_path.display()))?;
        let mut child = Command::new(tarn_binary())
            .arg("up")
            .arg("--dir")
            .arg(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|error| format!("cannot run tarn up: {error}"))?;
        let (lines_sender, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if lines_sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut up = TarnUp {
            child,
            layout: ClusterLayout::new(dir),
            stderr_path,
            connect_line: String::new(),
        };
        let deadline = Instant::now() + TARN_UP_READY_TIMEOUT;
        loop {
            match lines.recv_timeout(POLL_INTERVAL) {
                Ok(line) if line.starts_with("psql ") => {
                    up.connect_line = line;
                    return Ok(up);
                }
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    let status = wait_child(&mut up.child, TARN_UP_STOP_TIMEOUT);
                    return Err(format!(
                        "tarn up exited ({status:?}) before it was ready:\n{}",
                        up.stderr()
                    ));
                }
            }
            if Instant::now() >= deadline {
                let status = terminate(&mut up.child, TARN_UP_STOP_TIMEOUT);
                return Err(format!(
                    "tarn up was not ready within {TARN_UP_READY_TIMEOUT:?} (stopped: {status}):\n{}",
                    up.stderr()
                ));
            }
        }
    }

    /// The cluster directory's layout.
    pub fn layout(&self) -> &ClusterLayout {
        &self.layout
    }

    /// `tarn up`'s pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The current `tarn.json`.
    pub fn manifest(&self) -> ClusterManifest {
        ClusterManifest::read(&self.layout)
            .unwrap_or_else(|error| panic!("{error}"))
            .unwrap_or_else(|| panic!("{} is missing", self.layout.manifest_path().display()))
    }

    /// A handle on the cluster's Postgres (it does not stop Postgres when dropped: it did
    /// not start it).
    pub fn postgres(&self) -> PgCluster {
        PgCluster::open(&pg(), &self.layout.postgres_data_dir())
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Starts component `name` again from the command line recorded in `tarn.json`
    /// (after a test killed it), appending to its log. The caller owns the child and
    /// must stop it (for Postgres the child is `pg_ctl start -w`, which exits once the
    /// server is up; stop the server through [`TarnUp::postgres`]).
    pub fn respawn(&self, name: &str) -> Child {
        let manifest = self.manifest();
        let record = manifest
            .component(name)
            .unwrap_or_else(|| panic!("no component {name} in tarn.json"));
        let (program, args) = record
            .argv
            .split_first()
            .unwrap_or_else(|| panic!("empty argv for {name}"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&record.log_path)
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", record.log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|error| panic!("cannot open {}: {error}", record.log_path.display()));
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot respawn {name}: {error}"))
    }

    /// What `tarn up` wrote to stderr so far (its log).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stops the cluster with SIGTERM and returns `tarn up`'s exit status. Panics if it
    /// needed SIGKILL.
    pub fn stop(mut self) -> ExitStatus {
        send_signal(self.child.id(), libc::SIGTERM);
        match wait_child(&mut self.child, TARN_UP_STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "tarn up did not stop within {TARN_UP_STOP_TIMEOUT:?} of SIGTERM:\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for TarnUp {
    fn drop(&mut self) {
        terminate(&mut self.child, TARN_UP_STOP_TIMEOUT);
    }
}

/// A child process a test started itself (a component respawned after a kill, or a
/// `tarn safekeeper` run on its own). Dropping it stops it: SIGTERM, a bounded wait,
/// then SIGKILL.
pub struct OwnedChild {
    name: String,
    child: Child,
}

/// Grace between SIGTERM and SIGKILL when an [`OwnedChild`] is stopped.
pub const OWNED_CHILD_STOP_GRACE: Duration = Duration::from_secs(10);

impl OwnedChild {
    pub fn new(name: impl Into<String>, child: Child) -> OwnedChild {
        OwnedChild {
            name: name.into(),
            child,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if it has exited (reaping it).
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .try_wait()
            .unwrap_or_else(|error| panic!("cannot poll {}: {error}", self.name))
    }

    /// Kills it with SIGKILL and reaps it (a crash, as far as it can tell).
    pub fn kill(mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child
            .wait()
            .unwrap_or_else(|error| panic!("cannot reap {}: {error}", self.name))
    }

    /// Stops it (SIGTERM, then SIGKILL after [`OWNED_CHILD_STOP_GRACE`]).
    pub fn stop(mut self) -> ExitStatus {
        terminate(&mut self.child, OWNED_CHILD_STOP_GRACE)
    }
}

impl Drop for OwnedChild {
    fn drop(&mut self) {
        terminate(&mut self.child, OWNED_CHILD_STOP_GRACE);
    }
}

/// Starts `tarn ARGS...` in the background with stdout and stderr appended to `log`.
pub fn spawn_tarn(name: &str, args: &[&str], log: &Path) -> OwnedChild {
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", log.display()));
    let err = out
        .try_clone()
        .unwrap_or_else(|error| panic!("cannot open {}: {error}", log.display()));
    let child = Command::new(tarn_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run tarn {args:?}: {error}"));
    OwnedChild::new(name, child)
}

/// True while `pid` is a live process (a zombie waiting to be reaped is not).
pub fn process_is_running(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Runs `sql` with `psql` against 127.0.0.1:`port` (database `postgres`, user
/// `postgres`) and returns its unaligned, tuples-only output; panics with psql's error
/// if it fails.
pub fn psql_at(port: u16, sql: &str) -> String {
    let out = Command::new(pg().tool("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-c", sql])
        .env_remove("PGDATABASE")
        .output()
        .unwrap_or_else(|e| panic!("psql: {e}"));
    assert!(
        out.status.success(),
        "psql on port {port}: {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
