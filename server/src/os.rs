//! Safe wrappers over the few Unix calls std lacks: looking up a user, sending a signal,
//! telling whether a process is alive, locking a file, and asking the kernel whether a
//! TCP port has a listener. Every `unsafe` block in `tarn-server` lives here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::net::SocketAddrV4;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Numeric ids of a Unix user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Largest buffer offered to `getpwnam_r`; a passwd entry never comes near this.
const MAX_PASSWD_BUFFER_BYTES: usize = 1 << 20;

/// Looks `name` up in the user database. `Ok(None)` if there is no such user.
pub fn lookup_user(name: &str) -> io::Result<Option<UserIds>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut buffer_bytes = 1024;
    loop {
        let mut buffer: Vec<libc::c_char> = vec![0; buffer_bytes];
        // SAFETY: `passwd` is a plain C struct of integers and pointers; all-zero is a
        // valid (empty) value that getpwnam_r overwrites.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer refers to a live local; getpwnam_r writes only into
        // `entry` and into `buffer` up to the length we pass, and sets `result` to
        // `&entry` or null. We read only integer fields afterwards.
        let rc = unsafe {
            libc::getpwnam_r(
                c_name.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buffer_bytes < MAX_PASSWD_BUFFER_BYTES {
            buffer_bytes *= 2;
            continue;
        }
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(UserIds {
            uid: entry.pw_uid,
            gid: entry.pw_gid,
        }));
    }
}

/// True when this process runs with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Converts a pid to the kernel's type, refusing 0 and values that would turn into
/// "every process" or "a process group" in `kill(2)`.
fn checked_pid(pid: u32) -> io::Result<libc::pid_t> {
    match libc::pid_t::try_from(pid) {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("refusing to signal pid {pid}"),
        )),
    }
}

/// Sends `signal` to the process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = checked_pid(pid)?;
    // SAFETY: kill has no memory-safety preconditions; pid > 0 names one process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `signal` to every process in the process group led by `pgid`.
pub fn signal_process_group(pgid: u32, signal: libc::c_int) -> io::Result<()> {
    let pgid = checked_pid(pgid)?;
    // SAFETY: as in send_signal; a negative pid addresses the group |pid| (> 0 here,
    // so never -1, which would mean every process we may signal).
    if unsafe { libc::kill(-pgid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True if a process with this pid exists and is not a zombie.
pub fn process_is_alive(pid: u32) -> bool {
    let Ok(raw_pid) = checked_pid(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists = unsafe { libc::kill(raw_pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A zombie still answers kill(0); /proc tells its state ("Z") when /proc exists.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// The executable name the kernel reports for `pid` (`/proc/PID/comm`), if known.
pub fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|name| name.trim_end().to_string())
}

/// Takes an exclusive advisory lock on `file` without blocking. `Ok(false)` if another
/// open file description holds it. The lock lasts until `file` is closed.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor we own (borrowed for the call) has no memory effects.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Arranges for the child spawned from `command` to receive `signal` when the thread that
/// spawned it exits, so that children do not outlive a `tarn up` that was killed.
pub fn deliver_signal_on_parent_exit(command: &mut Command, signal: libc::c_int) {
    // SAFETY: the closure runs between fork and exec, where only async-signal-safe calls
    // are allowed: prctl is a plain system call and nothing here allocates or locks.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Asks the kernel (passively, through `/proc/net/tcp`) whether a socket is listening on
/// `addr` or on the wildcard address with the same port. `None` when /proc cannot tell.
pub fn tcp_listener_exists(addr: SocketAddrV4) -> Option<bool> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    Some(listening_in_proc_net_tcp(&table, addr))
}

/// `/proc/net/tcp` state code for LISTEN.
const TCP_STATE_LISTEN: &str = "0A";

fn listening_in_proc_net_tcp(table: &str, addr: SocketAddrV4) -> bool {
    // Addresses are printed as the in-memory (network order) u32 in host-order hex.
    let wanted_ip = format!("{:08X}", u32::from_ne_bytes(addr.ip().octets()));
    let wanted_port = format!("{:04X}", addr.port());
    table.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        let Some((ip, port)) = local.split_once(':') else {
            return false;
        };
        state == TCP_STATE_LISTEN && port == wanted_port && (ip == wanted_ip || ip == "00000000")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, TcpListener};

    #[test]
    fn sees_a_listener_in_proc_net_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let std::net::SocketAddr::V4(addr) = listener.local_addr().expect("addr") else {
            panic!("expected IPv4");
        };
        assert_eq!(tcp_listener_exists(addr), Some(true));
        drop(listener);
        assert_eq!(tcp_listener_exists(addr), Some(false));
    }

    #[test]
    fn parses_a_proc_net_tcp_line() {
        let table =
            "  sl  local_address rem_address   st\n   0: 0100007F:1F90 00000000:0000 0A 0\n";
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0x1F90);
        assert!(listening_in_proc_net_tcp(table, addr));
        assert!(!listening_in_proc_net_tcp(
            table,
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1)
        ));
    }

    #[test]
    fn refuses_dangerous_pids() {
        assert!(send_signal(0, 0).is_err());
        assert!(send_signal(u32::MAX, 0).is_err());
        assert!(process_is_alive(std::process::id()));
    }
}
