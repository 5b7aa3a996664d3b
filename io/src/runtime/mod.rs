//! Thread-per-core runtime: one glommio `LocalExecutor` per core, each on its own
//! thread pinned to one CPU, each running the caller's per-core future. This module
//! owns executor start-up and tear-down, the sizing of glommio's registered IO
//! memory against `RLIMIT_MEMLOCK`, and (in [`mailbox`]) the cross-thread mailbox
//! that hands work to a given core.
//!
//! Why the memlock care: glommio registers `io_memory` bytes with each of its 3
//! io_uring rings per executor; the kernel charges every registration against
//! `RLIMIT_MEMLOCK` (8 MiB for non-root here), and when registration fails glommio
//! only emits a `log` warning and silently falls back to unregistered buffers. We size
//! `io_memory` so that 3 × io_memory × executors fits, and say so loudly when it
//! cannot, or when the kernel's pinned-memory counter shows the registration failed.

pub mod mailbox;

pub use mailbox::{CoreMailbox, MailboxReceiver, MailboxSendError, MailboxSender};

use std::fmt;
use std::future::Future;
use std::sync::Mutex;

use glommio::{LocalExecutor, LocalExecutorBuilder, Placement};

use crate::error::IoError;

/// Index of a per-core executor: 0..cores of one [`run_per_core`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CoreIndex(pub usize);

impl fmt::Display for CoreIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "core {}", self.0)
    }
}

/// Upper bound on executors per call: each is a thread plus 3 io_uring rings; more
/// than this is a configuration error, not a machine we run on.
pub const MAX_CORES: usize = 1024;

/// Registered IO memory we ask for per executor when memlock is not the constraint.
/// glommio's default is 10 MiB; 8 MiB holds a few MiB of in-flight WAL writes plus
/// reads, and beyond it glommio just uses ordinary (unregistered) DMA buffers.
pub const DESIRED_IO_MEMORY_BYTES: usize = 8 << 20;

/// glommio registers the same io_memory region with this many rings per executor
/// (main, poll, latency), and the kernel charges each registration separately.
pub const RINGS_PER_EXECUTOR: usize = 3;

/// glommio rounds io_memory up to at least this (sys/uring.rs, `Reactor::new`).
pub const GLOMMIO_MIN_IO_MEMORY_BYTES: usize = 64 << 10;

/// glommio refuses to build an executor when RLIMIT_MEMLOCK is below this.
pub const GLOMMIO_MIN_MEMLOCK_BYTES: u64 = 512 << 10;

/// How big each executor's registered IO memory is, and whether registration fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoMemoryPlan {
    /// Passed to glommio's `LocalExecutorBuilder::io_memory` (page multiple).
    pub io_memory_bytes: usize,
    /// The memlock budget the plan was made against; `None` = unlimited
    /// (RLIM_INFINITY or CAP_IPC_LOCK).
    pub memlock_budget_bytes: Option<u64>,
    pub executors: usize,
    /// False when even glommio's minimum registration cannot fit: it will fall back
    /// to unregistered buffers (or refuse to start below 512 KiB).
    pub registration_fits: bool,
}

impl IoMemoryPlan {
    /// Bytes of pinned memory the kernel charges for all executors of the plan.
    pub fn pinned_bytes(&self) -> u64 {
        (RINGS_PER_EXECUTOR * self.executors) as u64
            * glommio_effective_io_memory(self.io_memory_bytes) as u64
    }
}

/// The io_memory glommio actually allocates and registers for a requested size.
fn glommio_effective_io_memory(requested: usize) -> usize {
    requested
        .div_ceil(4096)
        .saturating_mul(4096)
        .max(GLOMMIO_MIN_IO_MEMORY_BYTES)
}

/// Pure sizing rule: the largest page multiple ≤ [`DESIRED_IO_MEMORY_BYTES`] such that
/// `RINGS_PER_EXECUTOR × io_memory × executors ≤ budget`.
pub fn plan_io_memory(memlock_budget_bytes: Option<u64>, executors: usize) -> IoMemoryPlan {
    let executors = executors.max(1);
    let Some(budget) = memlock_budget_bytes else {
        return IoMemoryPlan {
            io_memory_bytes: DESIRED_IO_MEMORY_BYTES,
            memlock_budget_bytes,
            executors,
            registration_fits: true,
        };
    };
    let per_executor = budget / (RINGS_PER_EXECUTOR * executors) as u64;
    let per_executor = (per_executor & !4095).min(DESIRED_IO_MEMORY_BYTES as u64) as usize;
    let registration_fits = per_executor >= GLOMMIO_MIN_IO_MEMORY_BYTES;
    IoMemoryPlan {
        io_memory_bytes: per_executor.max(GLOMMIO_MIN_IO_MEMORY_BYTES),
        memlock_budget_bytes,
        executors,
        registration_fits,
    }
}

/// RLIMIT_MEMLOCK soft limit in bytes; `None` when unlimited.
fn memlock_limit_bytes() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    if rc != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "getrlimit(RLIMIT_MEMLOCK) failed; sizing glommio io_memory for glommio's 512 KiB minimum"
        );
        return Some(GLOMMIO_MIN_MEMLOCK_BYTES);
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        None
    } else {
        Some(limit.rlim_cur)
    }
}

/// Reads a field of /proc/self/status.
fn proc_status_field(name: &str) -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

/// The kernel skips memlock accounting for io_uring registrations when the process
/// has CAP_IPC_LOCK (e.g. root), so the rlimit does not constrain us then.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK_BIT: u32 = 14;
    proc_status_field("CapEff")
        .and_then(|hex| u64::from_str_radix(&hex, 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK_BIT) != 0)
}

/// mm->pinned_vm of this process (VmPin), which io_uring buffer registration raises
/// whether or not memlock accounting applies; used to verify registration worked.
fn vm_pinned_bytes() -> Option<u64> {
    let value = proc_status_field("VmPin")?;
    let kib: u64 = value.strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Process-wide bookkeeping of registered IO memory.
struct PinnedAccounting {
    /// Memlock budget promised to running `run_per_core` calls, so concurrent calls
    /// share RLIMIT_MEMLOCK instead of each assuming it has all of it.
    reserved_bytes: u64,
    /// Bytes registered by executors alive now whose registration we verified.
    live_registered_bytes: u64,
}

/// Also serialises executor construction, so a VmPin reading and the live total are
/// taken together.
static PINNED_ACCOUNTING: Mutex<PinnedAccounting> = Mutex::new(PinnedAccounting {
    reserved_bytes: 0,
    live_registered_bytes: 0,
});

fn lock_accounting() -> std::sync::MutexGuard<'static, PinnedAccounting> {
    // Critical sections only do arithmetic; a poisoned lock still holds sane numbers.
    PINNED_ACCOUNTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Releases a plan's share of the memlock budget when the call ends.
struct PinnedReservation(u64);

impl Drop for PinnedReservation {
    fn drop(&mut self) {
        let mut accounting = lock_accounting();
        accounting.reserved_bytes = accounting.reserved_bytes.saturating_sub(self.0);
    }
}

fn reserve_io_memory(executors: usize) -> (IoMemoryPlan, PinnedReservation) {
    let limit = if has_cap_ipc_lock() {
        None
    } else {
        memlock_limit_bytes()
    };
    let mut accounting = lock_accounting();
    let budget = limit.map(|l| l.saturating_sub(accounting.reserved_bytes));
    let plan = plan_io_memory(budget, executors);
    let pinned = if plan.registration_fits && limit.is_some() {
        plan.pinned_bytes()
    } else {
        0
    };
    accounting.reserved_bytes += pinned;
    drop(accounting);
    if let Some(limit) = limit {
        if limit < GLOMMIO_MIN_MEMLOCK_BYTES {
            tracing::error!(
                memlock_limit_bytes = limit,
                glommio_minimum_bytes = GLOMMIO_MIN_MEMLOCK_BYTES,
                "RLIMIT_MEMLOCK is below glommio's minimum: executors will fail to start. \
                 Raise it with `ulimit -l` (KiB), LimitMEMLOCK= in the systemd unit, or \
                 /etc/security/limits.conf"
            );
        } else if !plan.registration_fits {
            tracing::error!(
                memlock_limit_bytes = limit,
                memlock_available_bytes = budget.unwrap_or(0),
                executors,
                rings_per_executor = RINGS_PER_EXECUTOR,
                minimum_io_memory_bytes = GLOMMIO_MIN_IO_MEMORY_BYTES,
                "RLIMIT_MEMLOCK too small to register glommio IO buffers: \
                 {RINGS_PER_EXECUTOR} × {GLOMMIO_MIN_IO_MEMORY_BYTES} B × {executors} executors \
                 does not fit; glommio will silently use unregistered buffers (slower IO). \
                 Raise it with `ulimit -l` (KiB), LimitMEMLOCK= in the systemd unit, or \
                 /etc/security/limits.conf"
            );
        } else if plan.io_memory_bytes < DESIRED_IO_MEMORY_BYTES {
            tracing::info!(
                memlock_limit_bytes = limit,
                io_memory_bytes = plan.io_memory_bytes,
                desired_io_memory_bytes = DESIRED_IO_MEMORY_BYTES,
                executors,
                "glommio io_memory reduced to fit RLIMIT_MEMLOCK"
            );
        }
    }
    (plan, PinnedReservation(pinned))
}

/// Builds an executor on the current thread and checks, through VmPin, that glommio's
/// buffer registration took effect (glommio itself only logs through `log`). Returns
/// the registered bytes it verified (0 if registration failed).
///
/// The check is "VmPin ≥ everything our live executors registered, this one
/// included". The kernel releases a dropped executor's pins asynchronously, so VmPin
/// may lag above that sum (hiding a failure during heavy executor churn) but never
/// below it: the check cannot raise a false alarm.
fn build_executor(
    thread_name: &str,
    cpu: Option<usize>,
    plan: &IoMemoryPlan,
) -> Result<(LocalExecutor, u64), IoError> {
    let placement = match cpu {
        Some(cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    let builder = LocalExecutorBuilder::new(placement)
        .name(thread_name)
        .io_memory(plan.io_memory_bytes);
    let mut accounting = lock_accounting();
    let executor = builder.make().map_err(|e| IoError::Runtime {
        what: format!("building the glommio executor {thread_name} on cpu {cpu:?}: {e}"),
        source: Some(crate::error::glommio_to_io(e)),
    })?;
    let registered =
        (RINGS_PER_EXECUTOR * glommio_effective_io_memory(plan.io_memory_bytes)) as u64;
    let mut verified = 0;
    if let Some(pinned) = vm_pinned_bytes() {
        let expected = accounting.live_registered_bytes + registered;
        if pinned >= expected {
            verified = registered;
            accounting.live_registered_bytes = expected;
        } else {
            tracing::error!(
                executor = thread_name,
                vm_pinned_bytes = pinned,
                expected_pinned_bytes = expected,
                io_memory_bytes = plan.io_memory_bytes,
                memlock_budget_bytes = ?plan.memlock_budget_bytes,
                "glommio failed to register its IO buffers with io_uring (VmPin did not grow \
                 by {RINGS_PER_EXECUTOR} × io_memory); IO falls back to unregistered buffers. \
                 Usually RLIMIT_MEMLOCK is too small or shared with other processes of this \
                 user: raise it with `ulimit -l` (KiB) or LimitMEMLOCK= in the systemd unit"
            );
        }
    }
    Ok((executor, verified))
}

/// An executor's verified registration in the live total; dropping it removes it.
/// It must be dropped before the executor: once the executor is gone the kernel may
/// release the pins at any moment, and the total must already be lower by then.
struct LiveRegistration(u64);

impl Drop for LiveRegistration {
    fn drop(&mut self) {
        let mut accounting = lock_accounting();
        accounting.live_registered_bytes = accounting.live_registered_bytes.saturating_sub(self.0);
    }
}

/// The CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|id| id.id).collect())
        .unwrap_or_default()
}

/// Starts `cores` executors, each on its own thread pinned to one allowed CPU
/// (round-robin if there are more executors than CPUs), runs `f(CoreIndex(i))` on
/// executor `i`, and returns the outputs in core order once all have finished.
///
/// `f` is called on the executor's thread, so its future may be `!Send` (Rc,
/// glommio files). A panic in one core's future is returned as
/// [`IoError::CorePanicked`] after the other cores finish.
pub fn run_per_core<T, F, Fut>(cores: usize, name: &str, f: F) -> Result<Vec<T>, IoError>
where
    F: Fn(CoreIndex) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    run_per_core_from(0, cores, name, f)
}

/// As [`run_per_core`], but executor `i` is pinned to allowed CPU
/// `(first_cpu + i) % allowed`: several processes of one machine (e.g. three
/// safekeepers) can then be spread over the CPUs instead of all landing on the first.
pub fn run_per_core_from<T, F, Fut>(
    first_cpu: usize,
    cores: usize,
    name: &str,
    f: F,
) -> Result<Vec<T>, IoError>
where
    F: Fn(CoreIndex) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    if cores == 0 || cores > MAX_CORES {
        return Err(IoError::Runtime {
            what: format!("run_per_core({name}): cores must be in 1..={MAX_CORES}, got {cores}"),
            source: None,
        });
    }
    let cpus = allowed_cpus();
    if cpus.is_empty() {
        tracing::warn!(
            name,
            "could not read the allowed CPU set; executors run unpinned"
        );
    } else if cores > cpus.len() {
        tracing::warn!(
            name,
            cores,
            cpus = cpus.len(),
            "more executors than CPUs: executors share CPUs round-robin"
        );
    }
    let (plan, _reservation) = reserve_io_memory(cores);

    let mut handles = Vec::with_capacity(cores);
    let mut spawn_error = None;
    for core in 0..cores {
        let thread_name = format!("{name}-{core}");
        let cpu = (!cpus.is_empty()).then(|| cpus[(first_cpu + core) % cpus.len()]);
        let f = f.clone();
        let executor_name = thread_name.clone();
        let spawned = std::thread::Builder::new().name(thread_name.clone()).spawn(
            move || -> Result<T, IoError> {
                let (executor, verified_bytes) = build_executor(&executor_name, cpu, &plan)?;
                // Declared after `executor`, so dropped before it, also when the
                // future panics and the thread unwinds.
                let _registration = LiveRegistration(verified_bytes);
                Ok(executor.run(f(CoreIndex(core))))
            },
        );
        match spawned {
            Ok(handle) => handles.push((core, thread_name, handle)),
            Err(e) => {
                spawn_error = Some(IoError::Runtime {
                    what: format!("spawning thread {thread_name}"),
                    source: Some(e),
                });
                break;
            }
        }
    }

    // Join every started thread before reporting, so no executor outlives the call.
    let mut outputs = Vec::with_capacity(cores);
    let mut first_error = spawn_error;
    for (core, thread_name, handle) in handles {
        match handle.join() {
            Ok(Ok(output)) => outputs.push(output),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_panic) => {
                first_error.get_or_insert(IoError::CorePanicked {
                    core,
                    thread: thread_name,
                });
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outputs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_fits_memlock() {
        let mib = 1u64 << 20;
        // 8 MiB limit, 2 executors: 8 MiB / 6 rounded down to pages.
        let plan = plan_io_memory(Some(8 * mib), 2);
        assert!(plan.registration_fits);
        assert_eq!(plan.io_memory_bytes % 4096, 0);
        assert!(plan.pinned_bytes() <= 8 * mib);
        assert!(plan.io_memory_bytes as u64 > 8 * mib / 6 - 4096);
        // Unlimited: the desired size.
        assert_eq!(
            plan_io_memory(None, 64).io_memory_bytes,
            DESIRED_IO_MEMORY_BYTES
        );
        // Plenty: capped at the desired size.
        assert_eq!(
            plan_io_memory(Some(1 << 40), 2).io_memory_bytes,
            DESIRED_IO_MEMORY_BYTES
        );
        // Too small for glommio's 64 KiB minimum on 3 rings × 8 executors.
        let plan = plan_io_memory(Some(mib), 8);
        assert!(!plan.registration_fits);
        assert_eq!(plan.io_memory_bytes, GLOMMIO_MIN_IO_MEMORY_BYTES);
    }

    #[test]
    fn proc_fields_parse() {
        // Present on every Linux we run on; the parse must not silently fail.
        assert!(vm_pinned_bytes().is_some());
        assert!(proc_status_field("CapEff").is_some());
    }
}
