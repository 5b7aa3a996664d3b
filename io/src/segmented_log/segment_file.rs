//! One segment file: O_DIRECT through glommio's `DmaFile` when the filesystem allows
//! it, otherwise glommio's buffered file (io_uring, page cache) plus fdatasync. Also
//! the creation of zero-filled segments (write zeros to a temporary name, fdatasync,
//! rename, fsync the directory), so a segment name on disk always means a fully
//! allocated file.

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{BufferedFile, Directory, DmaFile, OpenOptions};

use crate::aligned::{AlignedBuf, BLOCK_SIZE_BYTES};
use crate::error::{IoError, glommio_to_io};

/// Largest single read or write submitted to the kernel: big enough that a
/// group-commit batch (bounded by the log's `MAX_BUFFERED_BYTES`) is one write per
/// segment, small enough to keep one DMA buffer modest.
pub(crate) const MAX_IO_BYTES: usize = 8 << 20;

/// A short read/write is continued for the rest; each continuation must make progress,
/// and after this many the file is declared broken rather than looped on.
const MAX_SHORT_IO_CONTINUATIONS: usize = 16;

/// Zero-filling writes use chunks of this size: one reusable buffer, few syscalls.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

enum Handle {
    Direct(DmaFile),
    Buffered(BufferedFile),
}

pub(crate) struct SegmentFile {
    path: PathBuf,
    handle: Handle,
    /// Whether O_DIRECT is in effect (glommio silently opens tmpfs files buffered).
    direct: bool,
}

/// True if `fd` has O_DIRECT set.
fn has_o_direct(fd: RawFd) -> bool {
    // SAFETY: F_GETFL only reads the flags of `fd`, which the caller's open file keeps
    // valid for the duration of the call; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    flags >= 0 && flags & libc::O_DIRECT != 0
}

impl SegmentFile {
    /// Opens an existing file for reading and writing; `Ok(None)` if it does not exist.
    /// `buffered` skips O_DIRECT (see [`probe_direct_io`]).
    pub(crate) async fn open_existing(
        path: &Path,
        buffered: bool,
    ) -> Result<Option<SegmentFile>, IoError> {
        match Self::open(path, false, buffered).await {
            Ok(f) => Ok(Some(f)),
            Err(IoError::Os { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates (or truncates) a file for reading and writing.
    pub(crate) async fn create_truncate(
        path: &Path,
        buffered: bool,
    ) -> Result<SegmentFile, IoError> {
        Self::open(path, true, buffered).await
    }

    async fn open(path: &Path, create: bool, buffered: bool) -> Result<SegmentFile, IoError> {
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if create {
            opts.create(true).truncate(true);
        }
        let op = if create { "creating" } else { "opening" };
        if buffered {
            let file = opts
                .buffered_open(path)
                .await
                .map_err(|e| IoError::glommio(op, path, 0, e))?;
            return Ok(SegmentFile {
                path: path.to_owned(),
                handle: Handle::Buffered(file),
                direct: false,
            });
        }
        match opts.dma_open(path).await {
            Ok(file) => {
                if !(BLOCK_SIZE_BYTES as u64).is_multiple_of(file.alignment()) {
                    return Err(IoError::InvalidArgument {
                        path: path.to_owned(),
                        pos: 0,
                        reason: format!(
                            "device needs O_DIRECT alignment {} which does not divide {BLOCK_SIZE_BYTES}",
                            file.alignment()
                        ),
                    });
                }
                let direct = has_o_direct(file.as_raw_fd());
                Ok(SegmentFile {
                    path: path.to_owned(),
                    handle: Handle::Direct(file),
                    direct,
                })
            }
            Err(e) => {
                let e = glommio_to_io(e);
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(IoError::os(op, path, 0, e));
                }
                // The filesystem refuses O_DIRECT: use buffered IO (the log warns).
                let file = opts
                    .buffered_open(path)
                    .await
                    .map_err(|e| IoError::glommio(op, path, 0, e))?;
                Ok(SegmentFile {
                    path: path.to_owned(),
                    handle: Handle::Buffered(file),
                    direct: false,
                })
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes all of `data` at `offset`. Both must be multiples of
    /// [`BLOCK_SIZE_BYTES`] (O_DIRECT); checked, never assumed.
    pub(crate) async fn write_all_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        if !offset.is_multiple_of(BLOCK_SIZE_BYTES as u64)
            || !data.len().is_multiple_of(BLOCK_SIZE_BYTES)
        {
            return Err(IoError::InvalidArgument {
                path: self.path.clone(),
                pos: offset,
                reason: format!("unaligned write of {} bytes", data.len()),
            });
        }
        let mut done = 0usize;
        // Bound: chunks needed for the data plus one continuation per short write.
        let max_steps = data.len().div_ceil(MAX_IO_BYTES) + MAX_SHORT_IO_CONTINUATIONS;
        for _ in 0..max_steps {
            if done == data.len() {
                return Ok(());
            }
            let chunk = &data[done..data.len().min(done + MAX_IO_BYTES)];
            let at = offset + done as u64;
            let written = self.write_once(at, chunk).await?;
            if written == 0 || !written.is_multiple_of(BLOCK_SIZE_BYTES) {
                return Err(IoError::os(
                    "writing",
                    &self.path,
                    at,
                    std::io::Error::new(
                        std::io::ErrorKind::WriteZero,
                        format!("short write of {written} of {} bytes", chunk.len()),
                    ),
                ));
            }
            done += written;
        }
        if done == data.len() {
            return Ok(());
        }
        Err(IoError::os(
            "writing",
            &self.path,
            offset + done as u64,
            std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("gave up after {max_steps} partial writes"),
            ),
        ))
    }

    async fn write_once(&self, at: u64, chunk: &[u8]) -> Result<usize, IoError> {
        match &self.handle {
            Handle::Direct(f) => {
                let mut buf = f.alloc_dma_buffer(chunk.len());
                buf.as_bytes_mut().copy_from_slice(chunk);
                f.write_at(buf, at)
                    .await
                    .map_err(|e| IoError::glommio("writing", &self.path, at, e))
            }
            Handle::Buffered(f) => f
                .write_at(chunk.to_vec(), at)
                .await
                .map_err(|e| IoError::glommio("writing", &self.path, at, e)),
        }
    }

    /// Writes `len` zero bytes at `offset` (both block multiples).
    pub(crate) async fn write_zeros(&self, offset: u64, len: u64) -> Result<u64, IoError> {
        let zeros = AlignedBuf::zeroed(ZERO_CHUNK_BYTES);
        let mut done = 0u64;
        let mut writes = 0u64;
        // Bound: len / chunk iterations, computed up front.
        let chunks = len.div_ceil(ZERO_CHUNK_BYTES as u64);
        for _ in 0..chunks {
            let n = (len - done).min(ZERO_CHUNK_BYTES as u64) as usize;
            self.write_all_at(offset + done, &zeros[..n]).await?;
            done += n as u64;
            writes += 1;
        }
        Ok(writes)
    }

    /// Reads up to `out.len()` bytes at `offset` into `out`; returns how many were read
    /// (fewer only at end of file). No alignment needed.
    pub(crate) async fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<usize, IoError> {
        let mut done = 0usize;
        let max_steps = out.len().div_ceil(MAX_IO_BYTES) + MAX_SHORT_IO_CONTINUATIONS;
        for _ in 0..max_steps {
            if done == out.len() {
                break;
            }
            let want = (out.len() - done).min(MAX_IO_BYTES);
            let at = offset + done as u64;
            let got = match &self.handle {
                Handle::Direct(f) => {
                    let r = f
                        .read_at(at, want)
                        .await
                        .map_err(|e| IoError::glommio("reading", &self.path, at, e))?;
                    let n = r.len().min(want);
                    out[done..done + n].copy_from_slice(&r[..n]);
                    n
                }
                Handle::Buffered(f) => {
                    let r = f
                        .read_at(at, want)
                        .await
                        .map_err(|e| IoError::glommio("reading", &self.path, at, e))?;
                    let n = r.len().min(want);
                    out[done..done + n].copy_from_slice(&r[..n]);
                    n
                }
            };
            if got == 0 {
                break; // end of file
            }
            done += got;
        }
        Ok(done)
    }

    /// Reads exactly `out.len()` bytes at `offset`.
    pub(crate) async fn read_exact_at(&self, offset: u64, out: &mut [u8]) -> Result<(), IoError> {
        let got = self.read_at(offset, out).await?;
        if got < out.len() {
            return Err(IoError::UnexpectedEof {
                path: self.path.clone(),
                offset: offset + got as u64,
                wanted: (out.len() - got) as u64,
            });
        }
        Ok(())
    }

    pub(crate) async fn sync(&self) -> Result<(), IoError> {
        let r = match &self.handle {
            Handle::Direct(f) => f.fdatasync().await,
            Handle::Buffered(f) => f.fdatasync().await,
        };
        r.map_err(|e| IoError::glommio("fdatasync of", &self.path, 0, e))
    }

    pub(crate) async fn close(self) -> Result<(), IoError> {
        let r = match self.handle {
            Handle::Direct(f) => f.close().await,
            Handle::Buffered(f) => f.close().await,
        };
        r.map_err(|e| IoError::glommio("closing", &self.path, 0, e))
    }
}

/// Closes a shared file if this was the last reference (otherwise the other holder
/// closes it; glommio closes dropped files asynchronously in any case).
pub(crate) async fn close_shared(file: Rc<SegmentFile>) -> Result<(), IoError> {
    match Rc::try_unwrap(file) {
        Ok(file) => file.close().await,
        Err(_) => Ok(()),
    }
}

/// fsyncs a directory so that renames and unlinks in it are durable.
pub(crate) async fn sync_dir(dir: &Path) -> Result<(), IoError> {
    let d = Directory::open(dir)
        .await
        .map_err(|e| IoError::glommio("opening directory", dir, 0, e))?;
    d.sync()
        .await
        .map_err(|e| IoError::glommio("fsync of directory", dir, 0, e))?;
    d.close()
        .await
        .map_err(|e| IoError::glommio("closing directory", dir, 0, e))
}

/// Creates `final_path` as `size_bytes` of durable zeros: written (not fallocated —
/// unwritten extents would make every later fdatasync a metadata update too) under
/// `tmp_path`, fdatasynced, renamed into place and the directory fsynced. An existing
/// file at `final_path` (a stale segment) is atomically replaced.
pub(crate) async fn create_zeroed_segment(
    dir: &Path,
    final_path: &Path,
    tmp_path: &Path,
    size_bytes: u64,
    buffered: bool,
) -> Result<(), IoError> {
    match std::fs::remove_file(tmp_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(IoError::os("removing stale", tmp_path, 0, e)),
    }
    let file = SegmentFile::create_truncate(tmp_path, buffered).await?;
    let written = async {
        file.write_zeros(0, size_bytes).await?;
        file.sync().await
    }
    .await;
    let close = file.close().await;
    written?;
    close?;
    // rename(2) is a short metadata operation done once per segment; running it inline
    // on the executor is cheaper than a hop to glommio's blocking thread pool.
    std::fs::rename(tmp_path, final_path).map_err(|e| IoError::os("renaming", tmp_path, 0, e))?;
    sync_dir(dir).await
}

/// Name of the scratch file [`probe_direct_io`] writes in a log directory.
pub(crate) const DIRECT_IO_PROBE_FILE: &str = ".tarn-io-direct-probe";

/// Checks that O_DIRECT reads and writes through glommio work in `dir` on this
/// executor thread; `Ok(Some(reason))` means "use buffered files".
///
/// Why: glommio decides, once per thread and block device, whether its polled
/// (IOPOLL) ring can serve a device by reading offset 0 of the first `DmaFile` opened
/// there. If that file is empty the read "succeeds" without touching the device,
/// glommio caches "pollable", and every later O_DIRECT read on that device fails with
/// EOPNOTSUPP on devices without poll queues (virtio here). Opening a non-empty file
/// first makes its probe read hit the device and get the right answer; if the cache was
/// already wrong, our own read here fails and we fall back to buffered IO.
pub(crate) async fn probe_direct_io(dir: &Path) -> Result<Option<String>, IoError> {
    let path = dir.join(DIRECT_IO_PROBE_FILE);
    let block = vec![0xA5u8; BLOCK_SIZE_BYTES];
    std::fs::write(&path, &block).map_err(|e| IoError::os("writing", &path, 0, e))?;
    let outcome = async {
        let Some(file) = SegmentFile::open_existing(&path, false).await? else {
            return Err(IoError::MissingSegment { path: path.clone(), pos: 0 });
        };
        let mut back = vec![0u8; BLOCK_SIZE_BYTES];
        let checked = async {
            file.read_exact_at(0, &mut back).await?;
            file.write_all_at(0, &AlignedBuf::from_slice(&block)).await
        }
        .await;
        let closed = file.close().await;
        match checked {
            Ok(()) if back == block => closed.map(|()| None),
            Ok(()) => Ok(Some("O_DIRECT read returned wrong bytes".to_owned())),
            Err(IoError::Os { source, op, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Ok(Some(format!("O_DIRECT {op} failed with EOPNOTSUPP (glommio polled ring on a device without poll queues)")))
            }
            Err(e) => Err(e),
        }
    }
    .await;
    let removed = std::fs::remove_file(&path).map_err(|e| IoError::os("removing", &path, 0, e));
    let outcome = outcome?;
    removed?;
    Ok(outcome)
}
