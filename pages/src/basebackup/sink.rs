//! Where a basebackup goes: the [`BackupSink`] trait, a stream of directories and
//! regular files with relative `/`-separated paths, and its directory implementation
//! ([`DirectorySink`]); the tar stream is in [`super::tar`].
//!
//! A file's length is declared before its bytes (a tar header needs it), and exactly
//! that many bytes must follow: a sink refuses a file that ends early or runs over.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// A destination for the entries of a data directory. Entries come parents first.
pub trait BackupSink {
    /// A directory (`path` relative to the data directory, without a trailing `/`).
    fn add_directory(&mut self, path: &str) -> io::Result<()>;
    /// Starts a regular file of exactly `len` bytes, given by [`Self::write_data`]
    /// calls and closed by [`Self::finish_file`].
    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()>;
    fn write_data(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn finish_file(&mut self) -> io::Result<()>;
    /// After the last entry.
    fn finish(&mut self) -> io::Result<()>;

    /// A whole small file.
    fn add_file(&mut self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.begin_file(path, bytes.len() as u64)?;
        self.write_data(bytes)?;
        self.finish_file()
    }
}

/// Checks that `path` is a plain relative path (no `..`, no root, no `.`), so that no
/// entry of a backup or an archive can land outside the target directory.
pub fn check_relative_path(path: &str) -> io::Result<()> {
    let plain = !path.is_empty()
        && Path::new(path)
            .components()
            .all(|component| matches!(component, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{path:?} is not a relative path inside the data directory"),
        ))
    }
}

/// Tracks the file being written: what was declared and what has come.
#[derive(Debug)]
pub(crate) struct OpenEntry {
    pub(crate) path: String,
    pub(crate) len: u64,
    pub(crate) written: u64,
}

impl OpenEntry {
    /// Accounts for `n` more bytes; an error if that exceeds the declared length.
    pub(crate) fn add(&mut self, n: usize) -> io::Result<()> {
        self.written += n as u64;
        if self.written > self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} was declared as {} bytes but more were written",
                    self.path, self.len
                ),
            ));
        }
        Ok(())
    }

    /// An error unless exactly the declared bytes came.
    pub(crate) fn check_complete(&self) -> io::Result<()> {
        if self.written != self.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} was declared as {} bytes but {} were written",
                    self.path, self.len, self.written
                ),
            ));
        }
        Ok(())
    }
}

fn no_open_file() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "no file is being written")
}

fn file_still_open(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{path} is still being written"),
    )
}

/// Writes a data directory: directories with mode 0700 and files with mode 0600, as
/// Postgres requires of its data directory. The target must not exist or be empty.
/// Optionally every entry is given to an owner (the user that runs Postgres, when the
/// writer is root).
pub struct DirectorySink {
    root: PathBuf,
    owner: Option<(u32, u32)>,
    open: Option<(OpenEntry, BufWriter<File>)>,
}

impl DirectorySink {
    /// Creates `root` (and its parents) or takes it if it is an empty directory.
    pub fn create(root: &Path) -> io::Result<DirectorySink> {
        match fs::read_dir(root) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{} exists and is not empty", root.display()),
                    ));
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new().recursive(true).mode(0o700).create(root)?;
            }
            Err(error) => return Err(error),
        }
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        Ok(DirectorySink {
            root: root.to_path_buf(),
            owner: None,
            open: None,
        })
    }

    /// Gives the root and every entry written to `uid`:`gid`.
    pub fn with_owner(mut self, uid: u32, gid: u32) -> io::Result<DirectorySink> {
        std::os::unix::fs::chown(&self.root, Some(uid), Some(gid))?;
        self.owner = Some((uid, gid));
        Ok(self)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn target(&self, path: &str) -> io::Result<PathBuf> {
        check_relative_path(path)?;
        Ok(self.root.join(path))
    }

    fn give_away(&self, path: &Path) -> io::Result<()> {
        match self.owner {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }
}

impl BackupSink for DirectorySink {
    fn add_directory(&mut self, path: &str) -> io::Result<()> {
        if let Some((entry, _)) = &self.open {
            return Err(file_still_open(&entry.path));
        }
        let target = self.target(path)?;
        DirBuilder::new().mode(0o700).create(&target)?;
        self.give_away(&target)
    }

    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()> {
        if let Some((entry, _)) = &self.open {
            return Err(file_still_open(&entry.path));
        }
        let target = self.target(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&target)?;
        self.give_away(&target)?;
        self.open = Some((
            OpenEntry {
                path: path.to_string(),
                len,
                written: 0,
            },
            BufWriter::with_capacity(1 << 20, file),
        ));
        Ok(())
    }

    fn write_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let (entry, file) = self.open.as_mut().ok_or_else(no_open_file)?;
        entry.add(bytes.len())?;
        file.write_all(bytes)
    }

    fn finish_file(&mut self) -> io::Result<()> {
        let (entry, file) = self.open.take().ok_or_else(no_open_file)?;
        entry.check_complete()?;
        file.into_inner().map_err(|error| error.into_error())?;
        Ok(())
    }

    fn finish(&mut self) -> io::Result<()> {
        match &self.open {
            Some((entry, _)) => Err(file_still_open(&entry.path)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tarn-sink-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writes_files_and_directories_with_postgres_modes() {
        let root = scratch("modes");
        let mut sink = DirectorySink::create(&root).expect("create");
        sink.add_directory("base").expect("dir");
        sink.add_directory("base/5").expect("dir");
        sink.add_file("base/5/PG_VERSION", b"15\n").expect("file");
        sink.begin_file("base/5/16384", 6).expect("begin");
        sink.write_data(b"abc").expect("data");
        sink.write_data(b"def").expect("data");
        sink.finish_file().expect("finish");
        sink.finish().expect("done");
        let mode = |path: &str| {
            fs::metadata(root.join(path))
                .expect("exists")
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("base"), 0o700);
        assert_eq!(mode("base/5/PG_VERSION"), 0o600);
        assert_eq!(
            fs::read(root.join("base/5/16384")).expect("read"),
            b"abcdef"
        );
        assert_eq!(
            fs::metadata(&root).expect("root").permissions().mode() & 0o777,
            0o700
        );
        // Not into a directory with contents.
        assert!(DirectorySink::create(&root).is_err());
        fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn refuses_wrong_lengths_and_escaping_paths() {
        let root = scratch("lengths");
        let mut sink = DirectorySink::create(&root).expect("create");
        sink.begin_file("short", 4).expect("begin");
        sink.write_data(b"ab").expect("data");
        assert!(sink.finish_file().is_err());
        sink.begin_file("long", 1).expect("begin");
        assert!(sink.write_data(b"ab").is_err());
        for bad in ["../x", "/etc/passwd", "a/../../b", "", "./a"] {
            assert!(check_relative_path(bad).is_err(), "{bad}");
        }
        assert!(check_relative_path("base/1/PG_VERSION").is_ok());
        fs::remove_dir_all(&root).expect("clean up");
    }
}
