//! Runs a child process to completion within a deadline, capturing its output, so that no
//! call into an external tool (initdb, pg_ctl, psql, ...) can hang its caller forever.

use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a running child is polled for exit.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// After the child exits, how long to wait for its pipes to reach end-of-file. A
/// grandchild that inherited a pipe (a daemon that did not redirect) must not hang us.
const PIPE_DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Output kept per stream; the rest is read and dropped so the child never blocks.
const MAX_CAPTURED_BYTES_PER_STREAM: usize = 64 << 20;

#[derive(Debug)]
pub enum RunError {
    Spawn(io::Error),
    Wait(io::Error),
    TimedOut,
}

/// Runs `command` with stdout and stderr captured and `stdin` (if any) fed to it. On
/// timeout the child is killed and reaped.
pub fn run_with_deadline(
    command: &mut Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<Output, RunError> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(RunError::Spawn)?;
    let deadline = Instant::now() + timeout;

    let writer = match (stdin, child.stdin.take()) {
        // A child that exits without reading all input closes the pipe: the writer then
        // fails with EPIPE, which is the child's business (its exit status says why).
        (Some(bytes), Some(mut pipe)) => Some(thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        })),
        _ => None,
    };
    let stdout = child.stdout.take().map(spawn_reader);
    let stderr = child.stderr.take().map(spawn_reader);

    let status = match wait_until(&mut child, deadline) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_and_reap(&mut child);
            return Err(RunError::TimedOut);
        }
        Err(error) => {
            kill_and_reap(&mut child);
            return Err(RunError::Wait(error));
        }
    };
    let drain_deadline = Instant::now() + PIPE_DRAIN_GRACE;
    let stdout = stdout.map(|r| r.finish(drain_deadline)).unwrap_or_default();
    let stderr = stderr.map(|r| r.finish(drain_deadline)).unwrap_or_default();
    if let Some(writer) = writer.filter(|writer| writer.is_finished()) {
        let _ = writer.join();
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Polls `child` until it exits (`Some(status)`) or `deadline` passes (`None`).
pub fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

fn kill_and_reap(child: &mut Child) {
    // Errors mean it already exited; wait() then reaps it.
    let _ = child.kill();
    let _ = child.wait();
}

struct PipeReader {
    captured: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

fn spawn_reader(mut pipe: impl Read + Send + 'static) -> PipeReader {
    let captured = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&captured);
    let thread = thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let mut buffer = sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let room = MAX_CAPTURED_BYTES_PER_STREAM.saturating_sub(buffer.len());
                    buffer.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
    });
    PipeReader { captured, thread }
}

impl PipeReader {
    /// What the pipe produced, once it reached end-of-file or `deadline` passed.
    fn finish(self, deadline: Instant) -> Vec<u8> {
        while !self.thread.is_finished() && Instant::now() < deadline {
            thread::sleep(POLL_INTERVAL);
        }
        if self.thread.is_finished() {
            let _ = self.thread.join();
        }
        let mut buffer = self
            .captured
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *buffer)
    }
}

/// Renders a command line for error messages, quoting arguments that need it.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| shell_quote(&arg.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes `arg` for a POSIX shell when it contains anything but safe characters.
pub fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_feeds_stdin() {
        let output = run_with_deadline(
            Command::new("sh").args(["-c", "cat; echo oops >&2; exit 3"]),
            Some(b"hello".to_vec()),
            Duration::from_secs(10),
        )
        .expect("sh runs");
        assert_eq!(output.stdout, b"hello");
        assert_eq!(output.stderr, b"oops\n");
        assert_eq!(output.status.code(), Some(3));
    }

    #[test]
    fn kills_a_child_that_overruns_its_deadline() {
        let started = Instant::now();
        let result = run_with_deadline(
            Command::new("sleep").arg("30"),
            None,
            Duration::from_millis(200),
        );
        assert!(matches!(result, Err(RunError::TimedOut)));
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn quotes_only_what_needs_quoting() {
        assert_eq!(shell_quote("-D/tmp/x"), "-D/tmp/x");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
