//! File IO with the store's durability rules and error reporting: a file is made
//! durable by writing it under a temporary name, fsyncing it, renaming it into place and
//! fsyncing the directory; reads are positioned and fail with the file's path.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Result, StoreError};

/// Suffix of files being written; any left behind by a crash are garbage.
pub(crate) const TEMP_SUFFIX: &str = ".tmp";

pub(crate) fn io_error<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn corrupt(path: &Path, offset: u64, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        detail: detail.into(),
    }
}

/// Creates `path` for writing, replacing any stale file of that name.
pub(crate) fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error("create", path))
}

/// fsyncs a written file and renames it to `final_path` (same directory). The rename is
/// durable only after [`sync_dir`].
pub(crate) fn commit_file(file: File, temp_path: &Path, final_path: &Path) -> Result<()> {
    file.sync_all().map_err(io_error("fsync", temp_path))?;
    drop(file);
    fs::rename(temp_path, final_path).map_err(io_error("rename", temp_path))
}

/// fsyncs a directory, making the renames and unlinks done in it durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("fsync directory", dir))
}

/// Replaces `dir/name` with `bytes` atomically and durably.
pub(crate) fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let final_path = dir.join(name);
    let temp_path = temp_path_for(&final_path);
    let mut file = create_file(&temp_path)?;
    file.write_all(bytes)
        .map_err(io_error("write", &temp_path))?;
    commit_file(file, &temp_path, &final_path)?;
    sync_dir(dir)
}

pub(crate) fn temp_path_for(final_path: &Path) -> PathBuf {
    let mut name = final_path.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

/// Reads exactly `len` bytes at `offset`; a short file is corruption (every caller reads
/// ranges its index promised are there).
pub(crate) fn read_exact_at(file: &File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset).map_err(|source| {
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            corrupt(
                path,
                offset,
                format!("file ends before the {len} bytes expected here"),
            )
        } else {
            StoreError::Io {
                op: "read",
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    Ok(buf)
}

/// Removes a file if it exists.
pub(crate) fn remove_file(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

/// Names for files being written, unique within one open store (a crash leaves them
/// behind; opening the store removes them).
#[derive(Default)]
pub(crate) struct TempNames {
    next: u64,
}

impl TempNames {
    pub fn next_path(&mut self, dir: &Path) -> PathBuf {
        self.next += 1;
        dir.join(format!("layer-{}{TEMP_SUFFIX}", self.next))
    }
}
