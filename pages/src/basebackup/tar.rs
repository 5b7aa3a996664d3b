//! A basebackup as a tar stream: [`TarWriter`] writes POSIX ustar (which GNU tar and
//! bsdtar read), and [`TarUnpacker`] reads such a stream back into any
//! [`BackupSink`] as it arrives (for `tarn basebackup -D`).
//!
//! Each entry is a 512-byte header (name, octal mode/size/mtime, header checksum,
//! type `0` file or `5` directory, magic `ustar\0` `00`) followed by the data padded to
//! 512 bytes; two zero blocks end the archive. Names longer than 100 bytes go into the
//! 155-byte prefix field, split at a `/`; PGDATA paths never need more, and a path that
//! does not fit is refused rather than written in an extension format. Sizes are
//! limited to the 11 octal digits of the size field (8 GiB; relation segments are 1
//! GiB). The unpacker accepts what [`TarWriter`] writes (plus GNU's `ustar  ` magic),
//! nothing else: links, devices and pax headers are errors.

use std::io::{self, Write};

use super::sink::{BackupSink, OpenEntry, check_relative_path};

/// Tar's block size.
pub const TAR_BLOCK: usize = 512;
const NAME_BYTES: usize = 100;
const PREFIX_BYTES: usize = 155;
/// The largest size 11 octal digits hold.
const MAX_ENTRY_BYTES: u64 = (1 << 33) - 1;

// Header field offsets and widths (ustar).
const NAME: usize = 0;
const MODE: usize = 100;
const UID: usize = 108;
const GID: usize = 116;
const SIZE: usize = 124;
const MTIME: usize = 136;
const CHKSUM: usize = 148;
const TYPEFLAG: usize = 156;
const MAGIC: usize = 257;
const VERSION: usize = 263;
const DEVMAJOR: usize = 329;
const DEVMINOR: usize = 337;
const PREFIX: usize = 345;

const TYPE_FILE: u8 = b'0';
const TYPE_FILE_OLD: u8 = 0;
const TYPE_DIRECTORY: u8 = b'5';

fn invalid(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, detail)
}

/// Writes `value` as `width - 1` zero-padded octal digits and a NUL.
fn put_octal(header: &mut [u8; TAR_BLOCK], at: usize, width: usize, value: u64) {
    let digits = format!("{value:0w$o}", w = width - 1);
    header[at..at + width - 1].copy_from_slice(digits.as_bytes());
    header[at + width - 1] = 0;
}

/// The header checksum: the sum of all header bytes with the checksum field as spaces.
fn header_checksum(header: &[u8; TAR_BLOCK]) -> u64 {
    header
        .iter()
        .enumerate()
        .map(|(at, byte)| {
            if (CHKSUM..CHKSUM + 8).contains(&at) {
                u64::from(b' ')
            } else {
                u64::from(*byte)
            }
        })
        .sum()
}

/// Splits `path` into (prefix, name) fields, or refuses it.
fn split_name(path: &str) -> io::Result<(&str, &str)> {
    if path.len() <= NAME_BYTES {
        return Ok(("", path));
    }
    // The last `/` that leaves a name of at most 100 bytes and a prefix of at most 155.
    for (at, _) in path.match_indices('/').rev() {
        let (prefix, name) = (&path[..at], &path[at + 1..]);
        if name.len() > NAME_BYTES {
            break;
        }
        if prefix.len() <= PREFIX_BYTES && !name.is_empty() {
            return Ok((prefix, name));
        }
    }
    Err(invalid(format!(
        "{path:?} is too long for a ustar header ({} bytes; at most {PREFIX_BYTES} + {NAME_BYTES} split at a '/')",
        path.len()
    )))
}

/// A ustar header for `path`.
fn header(
    path: &str,
    typeflag: u8,
    mode: u64,
    size: u64,
    mtime: u64,
) -> io::Result<[u8; TAR_BLOCK]> {
    if size > MAX_ENTRY_BYTES {
        return Err(invalid(format!(
            "{path} is {size} bytes, more than a ustar header can describe"
        )));
    }
    let (prefix, name) = split_name(path)?;
    let mut header = [0u8; TAR_BLOCK];
    header[NAME..NAME + name.len()].copy_from_slice(name.as_bytes());
    put_octal(&mut header, MODE, 8, mode);
    put_octal(&mut header, UID, 8, 0);
    put_octal(&mut header, GID, 8, 0);
    put_octal(&mut header, SIZE, 12, size);
    put_octal(&mut header, MTIME, 12, mtime.min(MAX_ENTRY_BYTES));
    header[TYPEFLAG] = typeflag;
    header[MAGIC..MAGIC + 6].copy_from_slice(b"ustar\0");
    header[VERSION..VERSION + 2].copy_from_slice(b"00");
    put_octal(&mut header, DEVMAJOR, 8, 0);
    put_octal(&mut header, DEVMINOR, 8, 0);
    header[PREFIX..PREFIX + prefix.len()].copy_from_slice(prefix.as_bytes());
    // Six octal digits, NUL, space: what tar itself writes.
    let checksum = format!("{:06o}\0 ", header_checksum(&header));
    header[CHKSUM..CHKSUM + 8].copy_from_slice(checksum.as_bytes());
    Ok(header)
}

/// Writes a tar stream to `out`. Entries are owned by uid/gid 0 with no user names: an
/// extracting root keeps its own ownership only with `--no-same-owner`, anyone else
/// owns what they extract.
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
    open: Option<OpenEntry>,
    finished: bool,
}

impl<W: Write> TarWriter<W> {
    /// Entries get `mtime` (seconds since the epoch) as their modification time.
    pub fn new(out: W, mtime: u64) -> TarWriter<W> {
        TarWriter {
            out,
            mtime,
            open: None,
            finished: false,
        }
    }

    /// The underlying writer (after [`BackupSink::finish`]).
    pub fn into_inner(self) -> W {
        self.out
    }

    fn check_idle(&self) -> io::Result<()> {
        if let Some(entry) = &self.open {
            return Err(invalid(format!("{} is still being written", entry.path)));
        }
        if self.finished {
            return Err(invalid("the archive is finished".to_string()));
        }
        Ok(())
    }
}

impl<W: Write> BackupSink for TarWriter<W> {
    fn add_directory(&mut self, path: &str) -> io::Result<()> {
        self.check_idle()?;
        check_relative_path(path)?;
        let header = header(&format!("{path}/"), TYPE_DIRECTORY, 0o700, 0, self.mtime)?;
        self.out.write_all(&header)
    }

    fn begin_file(&mut self, path: &str, len: u64) -> io::Result<()> {
        self.check_idle()?;
        check_relative_path(path)?;
        let header = header(path, TYPE_FILE, 0o600, len, self.mtime)?;
        self.out.write_all(&header)?;
        self.open = Some(OpenEntry {
            path: path.to_string(),
            len,
            written: 0,
        });
        Ok(())
    }

    fn write_data(&mut self, bytes: &[u8]) -> io::Result<()> {
        let entry = self
            .open
            .as_mut()
            .ok_or_else(|| invalid("no file is being written".to_string()))?;
        entry.add(bytes.len())?;
        self.out.write_all(bytes)
    }

    fn finish_file(&mut self) -> io::Result<()> {
        let entry = self
            .open
            .take()
            .ok_or_else(|| invalid("no file is being written".to_string()))?;
        entry.check_complete()?;
        let padding = (TAR_BLOCK - (entry.len % TAR_BLOCK as u64) as usize) % TAR_BLOCK;
        self.out.write_all(&[0u8; TAR_BLOCK][..padding])
    }

    fn finish(&mut self) -> io::Result<()> {
        self.check_idle()?;
        self.out.write_all(&[0u8; 2 * TAR_BLOCK])?;
        self.finished = true;
        self.out.flush()
    }
}

/// Where the unpacker is in the stream.
#[derive(Debug)]
enum UnpackState {
    /// Collecting a header block.
    Header,
    /// Passing a file's data on; then skipping its padding.
    Data { remaining: u64, padding: usize },
    /// Skipping the padding after a file's data.
    Padding { remaining: usize },
    /// After the end-of-archive block: anything but zeros is an error.
    End,
}

/// Reads a tar stream (as [`TarWriter`] writes it) fed through [`Write`] and replays
/// its entries into a sink. Call [`TarUnpacker::finish`] at the end of the stream: an
/// archive cut short is an error there.
pub struct TarUnpacker<S: BackupSink> {
    sink: S,
    state: UnpackState,
    block: Vec<u8>,
    entries: u64,
}

impl<S: BackupSink> TarUnpacker<S> {
    pub fn new(sink: S) -> TarUnpacker<S> {
        TarUnpacker {
            sink,
            state: UnpackState::Header,
            block: Vec::with_capacity(TAR_BLOCK),
            entries: 0,
        }
    }

    /// Entries unpacked so far.
    pub fn entries(&self) -> u64 {
        self.entries
    }

    /// Checks that the archive ended properly and finishes the sink.
    pub fn finish(mut self) -> io::Result<S> {
        if !matches!(self.state, UnpackState::End) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the tar stream ended early (in state {:?})", self.state),
            ));
        }
        self.sink.finish()?;
        Ok(self.sink)
    }

    fn on_header(&mut self) -> io::Result<()> {
        let block: [u8; TAR_BLOCK] = self
            .block
            .as_slice()
            .try_into()
            .map_err(|_| invalid("a partial tar header".to_string()))?;
        self.block.clear();
        if block.iter().all(|byte| *byte == 0) {
            self.state = UnpackState::End;
            return Ok(());
        }
        let magic = &block[MAGIC..MAGIC + 6];
        if magic != b"ustar\0" && magic != b"ustar " {
            return Err(invalid("not a ustar header".to_string()));
        }
        let stored = parse_octal(&block[CHKSUM..CHKSUM + 8])?;
        if stored != header_checksum(&block) {
            return Err(invalid(format!(
                "tar header checksum mismatch: stored {stored}, computed {}",
                header_checksum(&block)
            )));
        }
        let name = field_text(&block[NAME..NAME + NAME_BYTES])?;
        let prefix = field_text(&block[PREFIX..PREFIX + PREFIX_BYTES])?;
        let path = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        let size = parse_octal(&block[SIZE..SIZE + 12])?;
        self.entries += 1;
        match block[TYPEFLAG] {
            TYPE_DIRECTORY => {
                self.sink.add_directory(path.trim_end_matches('/'))?;
                self.state = UnpackState::Header;
            }
            TYPE_FILE | TYPE_FILE_OLD => {
                self.sink.begin_file(&path, size)?;
                let padding = (TAR_BLOCK - (size % TAR_BLOCK as u64) as usize) % TAR_BLOCK;
                if size == 0 {
                    self.sink.finish_file()?;
                    self.state = UnpackState::Header;
                } else {
                    self.state = UnpackState::Data {
                        remaining: size,
                        padding,
                    };
                }
            }
            other => {
                return Err(invalid(format!(
                    "{path}: tar entry type {:?} is not supported",
                    other as char
                )));
            }
        }
        Ok(())
    }
}

/// A NUL-terminated (or full-width) header text field.
fn field_text(field: &[u8]) -> io::Result<&str> {
    let end = field
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).map_err(|_| invalid("a tar name is not UTF-8".to_string()))
}

/// An octal number field (spaces and NULs around the digits).
fn parse_octal(field: &[u8]) -> io::Result<u64> {
    let text = field_text(field)?.trim();
    u64::from_str_radix(text, 8)
        .map_err(|_| invalid(format!("bad octal field {text:?} in a tar header")))
}

impl<S: BackupSink> Write for TarUnpacker<S> {
    fn write(&mut self, mut bytes: &[u8]) -> io::Result<usize> {
        let given = bytes.len();
        while !bytes.is_empty() {
            match &mut self.state {
                UnpackState::Header => {
                    let n = bytes.len().min(TAR_BLOCK - self.block.len());
                    self.block.extend_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    if self.block.len() == TAR_BLOCK {
                        self.on_header()?;
                    }
                }
                UnpackState::Data { remaining, padding } => {
                    let n = bytes
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    self.sink.write_data(&bytes[..n])?;
                    bytes = &bytes[n..];
                    *remaining -= n as u64;
                    if *remaining == 0 {
                        let padding = *padding;
                        self.sink.finish_file()?;
                        self.state = if padding == 0 {
                            UnpackState::Header
                        } else {
                            UnpackState::Padding { remaining: padding }
                        };
                    }
                }
                UnpackState::Padding { remaining } => {
                    let n = bytes.len().min(*remaining);
                    bytes = &bytes[n..];
                    *remaining -= n;
                    if *remaining == 0 {
                        self.state = UnpackState::Header;
                    }
                }
                UnpackState::End => {
                    if bytes.iter().any(|byte| *byte != 0) {
                        return Err(invalid("data after the end of the tar archive".to_string()));
                    }
                    bytes = &[];
                }
            }
        }
        Ok(given)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A sink that records entries, for round trips.
    #[derive(Default, Debug, PartialEq, Eq)]
    pub(crate) struct MemorySink {
        pub(crate) entries: Vec<(String, Option<Vec<u8>>)>,
        pub(crate) finished: bool,
    }

    impl BackupSink for MemorySink {
        fn add_directory(&mut self, path: &str) -> io::Result<()> {
            self.entries.push((path.to_string(), None));
            Ok(())
        }
        fn begin_file(&mut self, path: &str, _len: u64) -> io::Result<()> {
            self.entries.push((path.to_string(), Some(Vec::new())));
            Ok(())
        }
        fn write_data(&mut self, bytes: &[u8]) -> io::Result<()> {
            match self.entries.last_mut() {
                Some((_, Some(data))) => {
                    data.extend_from_slice(bytes);
                    Ok(())
                }
                _ => Err(invalid("no open file".to_string())),
            }
        }
        fn finish_file(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn finish(&mut self) -> io::Result<()> {
            self.finished = true;
            Ok(())
        }
    }

    fn sample_archive() -> Vec<u8> {
        let mut tar = TarWriter::new(Vec::new(), 1_700_000_000);
        tar.add_directory("base").expect("dir");
        tar.add_file("PG_VERSION", b"15\n").expect("file");
        tar.add_file("empty", b"").expect("file");
        tar.add_file("base/block", &[7u8; 1024]).expect("file");
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        tar.add_file(&long, b"long name").expect("prefix split");
        tar.finish().expect("finish");
        tar.into_inner()
    }

    #[test]
    fn round_trips_through_the_unpacker_in_any_chunking() {
        let archive = sample_archive();
        assert_eq!(archive.len() % TAR_BLOCK, 0);
        for chunk in [1, 7, 512, 513, 100_000] {
            let mut unpacker = TarUnpacker::new(MemorySink::default());
            for piece in archive.chunks(chunk) {
                unpacker.write_all(piece).expect("valid archive");
            }
            assert_eq!(unpacker.entries(), 5);
            let sink = unpacker.finish().expect("complete");
            assert!(sink.finished);
            let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
            assert_eq!(
                sink.entries,
                vec![
                    ("base".to_string(), None),
                    ("PG_VERSION".to_string(), Some(b"15\n".to_vec())),
                    ("empty".to_string(), Some(Vec::new())),
                    ("base/block".to_string(), Some(vec![7u8; 1024])),
                    (long, Some(b"long name".to_vec())),
                ]
            );
        }
    }

    #[test]
    fn headers_are_ustar_with_valid_checksums() {
        let archive = sample_archive();
        let first: [u8; TAR_BLOCK] = archive[..TAR_BLOCK].try_into().expect("block");
        assert_eq!(&first[..5], b"base/");
        assert_eq!(&first[MAGIC..MAGIC + 8], b"ustar\x0000");
        assert_eq!(first[TYPEFLAG], b'5');
        assert_eq!(&first[MODE..MODE + 8], b"0000700\0");
        let stored = parse_octal(&first[CHKSUM..CHKSUM + 8]).expect("octal");
        assert_eq!(stored, header_checksum(&first));
    }

    #[test]
    fn refuses_what_it_cannot_write_or_read() {
        let mut tar = TarWriter::new(Vec::new(), 0);
        let error = tar.add_file(&"x".repeat(300), b"").expect_err("too long");
        assert!(
            error.to_string().contains("too long for a ustar header"),
            "{error}"
        );
        assert!(tar.add_file("../escape", b"").is_err());
        tar.begin_file("f", 3).expect("begin");
        assert!(tar.write_data(b"abcd").is_err());

        let mut archive = sample_archive();
        archive.truncate(archive.len() - 2 * TAR_BLOCK - 100);
        let mut unpacker = TarUnpacker::new(MemorySink::default());
        unpacker.write_all(&archive).expect("a prefix is fine");
        assert!(unpacker.finish().is_err(), "an archive cut short");

        let mut corrupt = sample_archive();
        corrupt[10] ^= 1;
        let mut unpacker = TarUnpacker::new(MemorySink::default());
        assert!(unpacker.write_all(&corrupt).is_err());
    }
}
