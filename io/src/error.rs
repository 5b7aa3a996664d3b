//! The crate's error type. Every file error names the file and the offset it was
//! working at, so a log line alone says what failed and where.

use std::io;
use std::path::PathBuf;

/// Errors of `tarn-io`. File variants always carry the path and the byte offset.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// ENOSPC: the filesystem is full. Its own variant because the operator's fix
    /// (free space) differs from every other IO error's.
    #[error("disk full: no space left on device while {op} {path} at offset {offset}")]
    DiskFull {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// Any other operating-system error on a file or directory.
    #[error("{op} {path} at offset {offset} failed: {source}")]
    Os {
        op: &'static str,
        path: PathBuf,
        offset: u64,
        #[source]
        source: io::Error,
    },

    /// A file ended before the bytes we needed (segment files are preallocated to full
    /// size, so this means the file was truncated behind our back).
    #[error("unexpected end of file {path} at offset {offset}: wanted {wanted} more bytes")]
    UnexpectedEof {
        path: PathBuf,
        offset: u64,
        wanted: u64,
    },

    /// A write that starts past the written end would leave a hole in the log.
    #[error(
        "write at position {pos} in {dir} would leave a gap: the log is written only up to {written_end}"
    )]
    Gap {
        dir: PathBuf,
        pos: u64,
        written_end: u64,
    },

    /// A read asked for bytes past the written end.
    #[error(
        "read of {len} bytes at position {pos} in {dir} goes past the written end {written_end}"
    )]
    ReadPastEnd {
        dir: PathBuf,
        pos: u64,
        len: u64,
        written_end: u64,
    },

    /// The segment file holding `pos` does not exist.
    #[error("segment file {path} holding position {pos} does not exist")]
    MissingSegment { path: PathBuf, pos: u64 },

    /// The written end has not been declared yet (see `SegmentedLog::set_written_end`).
    #[error(
        "the written end of {dir} is not known yet (operation at position {pos}): scan with read_raw, then call set_written_end"
    )]
    EndUnknown { dir: PathBuf, pos: u64 },

    /// A caller passed an argument outside what the API accepts.
    #[error("invalid argument for {path} at position {pos}: {reason}")]
    InvalidArgument {
        path: PathBuf,
        pos: u64,
        reason: String,
    },

    /// An earlier write or fdatasync failed; after a failed fdatasync the kernel may
    /// have dropped the dirty data, so the log refuses all further IO rather than
    /// report durability it cannot know (the "fsyncgate" lesson).
    #[error("log {dir} stopped after an earlier failure (operation at position {pos}): {cause}")]
    Failed {
        dir: PathBuf,
        pos: u64,
        cause: String,
    },

    /// A bounded wait or retry ran out; the message names the bound.
    #[error("{dir}: gave up at position {pos}: {reason}")]
    Overloaded {
        dir: PathBuf,
        pos: u64,
        reason: String,
    },

    /// Starting or running the per-core executors failed.
    #[error("runtime: {what}")]
    Runtime {
        what: String,
        #[source]
        source: Option<io::Error>,
    },

    /// The future of one core panicked; the panic message was printed by std.
    #[error("the executor of core {core} ({thread}) panicked")]
    CorePanicked { core: usize, thread: String },
}

impl IoError {
    /// Classifies an OS error for a file operation: ENOSPC becomes [`IoError::DiskFull`].
    pub(crate) fn os(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: u64,
        source: io::Error,
    ) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            IoError::DiskFull {
                op,
                path,
                offset,
                source,
            }
        } else {
            IoError::Os {
                op,
                path,
                offset,
                source,
            }
        }
    }

    /// Same as [`IoError::os`] for a glommio error, keeping the raw OS error code
    /// (glommio's own conversion to `io::Error` drops it for "enhanced" errors).
    pub(crate) fn glommio(
        op: &'static str,
        path: impl Into<PathBuf>,
        offset: u64,
        source: glommio::GlommioError<()>,
    ) -> Self {
        Self::os(op, path, offset, glommio_to_io(source))
    }
}

/// Converts a glommio error into the underlying `io::Error`, preserving the OS code.
pub(crate) fn glommio_to_io(err: glommio::GlommioError<()>) -> io::Error {
    match err {
        glommio::GlommioError::IoError(e) => e,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        other => io::Error::from(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_is_disk_full_naming_file_and_offset() {
        let err = IoError::os(
            "writing",
            "/data/wal/000000010000000000000001",
            8192,
            io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(err, IoError::DiskFull { .. }));
        let msg = err.to_string();
        assert!(msg.contains("disk full"), "{msg}");
        assert!(
            msg.contains("/data/wal/000000010000000000000001") && msg.contains("8192"),
            "{msg}"
        );
        let other = IoError::os("reading", "/x", 1, io::Error::from_raw_os_error(libc::EIO));
        assert!(matches!(other, IoError::Os { .. }));
    }
}
