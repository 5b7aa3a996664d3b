//! The timeline's metadata file, its commit record: the durable LSN (every version at or
//! below it is in the listed layers; ingest resumes above it), the names of the layer
//! files that make up the timeline, and its ancestor (parent timeline and branch LSN)
//! if it is a branch. Flushes and compactions take effect by replacing
//! this file atomically; layer files it does not list are leftovers of an interrupted
//! flush or compaction.
//!
//! Format (little-endian): magic `TARNMETA`, format version u32, archive length u32,
//! crc32c of the archive u32, then an rkyv archive of `MetadataRecord` (format 2) or of
//! `MetadataRecordV1` (format 1: no ancestor; still read).

use std::fs;
use std::path::Path;

use rkyv::{Archive, Serialize, rancor};
use tarn_wal::{Lsn, TimelineId};

use super::durable::{self, corrupt, io_error};
use super::{Result, StoreError};

pub(crate) const METADATA_FILE: &str = "metadata";
const MAGIC: [u8; 8] = *b"TARNMETA";
const FORMAT_VERSION: u32 = 2;
const FORMAT_VERSION_V1: u32 = 1;
const HEADER_BYTES: usize = 20;
/// A metadata file lists layer names (~120 bytes each); 64 MiB is far beyond any
/// timeline's layer count and stops a corrupt length from allocating without bound.
const MAX_METADATA_BYTES: u64 = 64 << 20;

/// Only ever read (files written by earlier builds); tests write one.
#[cfg_attr(not(test), allow(dead_code))]
#[derive(Archive, Serialize)]
struct MetadataRecordV1 {
    durable_lsn: u64,
    layers: Vec<String>,
}

#[derive(Archive, Serialize)]
struct MetadataRecord {
    durable_lsn: u64,
    layers: Vec<String>,
    /// The LSN the timeline's history starts above (its creation LSN).
    start_lsn: u64,
    /// `(parent timeline id, branch LSN)`.
    ancestor: Option<(u128, u64)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TimelineMetadata {
    pub durable_lsn: Lsn,
    pub layers: Vec<String>,
    /// The timeline's own history starts above it; `None` from format 1 files (the
    /// caller derives it from the layers).
    pub start_lsn: Option<Lsn>,
    /// The parent timeline and the LSN this one branched from it at.
    pub ancestor: Option<(TimelineId, Lsn)>,
}

impl TimelineMetadata {
    /// Replaces the metadata file of `dir` atomically and durably.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let record = MetadataRecord {
            durable_lsn: self.durable_lsn.0,
            layers: self.layers.clone(),
            start_lsn: self.start_lsn.unwrap_or(self.durable_lsn).0,
            ancestor: self.ancestor.map(|(id, lsn)| (id.0, lsn.0)),
        };
        let path = dir.join(METADATA_FILE);
        let archive = rkyv::to_bytes::<rancor::Error>(&record)
            .map_err(|e| io_error("serialize", &path)(std::io::Error::other(e)))?;
        let mut bytes = Vec::with_capacity(HEADER_BYTES + archive.len());
        bytes.extend_from_slice(&MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(archive.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&archive).to_le_bytes());
        bytes.extend_from_slice(&archive);
        durable::write_atomically(dir, METADATA_FILE, &bytes)
    }

    /// Reads and validates the metadata file of `dir`.
    pub fn read(dir: &Path) -> Result<TimelineMetadata> {
        let path = dir.join(METADATA_FILE);
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotATimeline {
                    path: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(io_error("stat", &path)(e)),
        };
        if len > MAX_METADATA_BYTES {
            return Err(corrupt(
                &path,
                0,
                format!("{len} bytes is larger than any metadata file"),
            ));
        }
        let bytes = fs::read(&path).map_err(io_error("read", &path))?;
        if bytes.len() < HEADER_BYTES || bytes[..8] != MAGIC {
            return Err(corrupt(
                &path,
                0,
                "not a timeline metadata file (bad magic or too short)",
            ));
        }
        let le32 = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let version = le32(8);
        if version != FORMAT_VERSION && version != FORMAT_VERSION_V1 {
            return Err(corrupt(
                &path,
                8,
                format!(
                    "metadata format {version}, this build reads {FORMAT_VERSION_V1} and {FORMAT_VERSION}"
                ),
            ));
        }
        let archive = &bytes[HEADER_BYTES..];
        if le32(12) as usize != archive.len() {
            return Err(corrupt(
                &path,
                12,
                format!("header says {} bytes, file has {}", le32(12), archive.len()),
            ));
        }
        let (stored, computed) = (le32(16), crc32c::crc32c(archive));
        if stored != computed {
            return Err(corrupt(
                &path,
                HEADER_BYTES as u64,
                format!("checksum mismatch: stored {stored:08x}, computed {computed:08x}"),
            ));
        }
        let invalid =
            |e: rancor::Error| corrupt(&path, HEADER_BYTES as u64, format!("archive invalid: {e}"));
        let names = |layers: &rkyv::vec::ArchivedVec<rkyv::string::ArchivedString>| {
            layers
                .iter()
                .map(|name| name.as_str().to_string())
                .collect()
        };
        if version == FORMAT_VERSION_V1 {
            let record = rkyv::access::<ArchivedMetadataRecordV1, rancor::Error>(archive)
                .map_err(invalid)?;
            return Ok(TimelineMetadata {
                durable_lsn: Lsn(record.durable_lsn.to_native()),
                layers: names(&record.layers),
                start_lsn: None,
                ancestor: None,
            });
        }
        let record =
            rkyv::access::<ArchivedMetadataRecord, rancor::Error>(archive).map_err(invalid)?;
        Ok(TimelineMetadata {
            durable_lsn: Lsn(record.durable_lsn.to_native()),
            layers: names(&record.layers),
            start_lsn: Some(Lsn(record.start_lsn.to_native())),
            ancestor: record.ancestor.as_ref().map(|ancestor| {
                (
                    TimelineId(ancestor.0.to_native()),
                    Lsn(ancestor.1.to_native()),
                )
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A format 1 file (written before branches existed) still opens: no ancestor, and
    /// the start left for the caller to derive.
    #[test]
    fn reads_format_1() {
        let dir = std::env::temp_dir().join(format!("tarn-meta-v1-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("dir");
        let record = MetadataRecordV1 {
            durable_lsn: 0x1234,
            layers: vec!["a".into(), "b".into()],
        };
        let archive = rkyv::to_bytes::<rancor::Error>(&record).expect("archive");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION_V1.to_le_bytes());
        bytes.extend_from_slice(&(archive.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(&archive).to_le_bytes());
        bytes.extend_from_slice(&archive);
        fs::write(dir.join(METADATA_FILE), bytes).expect("write");
        let read = TimelineMetadata::read(&dir).expect("read");
        let _ = fs::remove_dir_all(&dir);
        assert_eq!(
            read,
            TimelineMetadata {
                durable_lsn: Lsn(0x1234),
                layers: vec!["a".into(), "b".into()],
                start_lsn: None,
                ancestor: None,
            }
        );
    }
}
