//! `tarn.json`: what `tarn up` records about a cluster in its directory: the Postgres
//! system id and tarn timeline id it was created with (checked on every start), the
//! ports, and for each component its pid and the full command line that started it, so
//! that an operator or a test can restart a component after killing it.
//!
//! Written atomically (temporary file, fsync, rename, fsync of the directory).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tarn_wal::TimelineId;

use crate::layout::ClusterLayout;

/// Bumped when a change to the format would mislead an older reader.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterManifest {
    pub format_version: u32,
    /// Postgres's database system identifier (`pg_controldata`).
    pub system_id: u64,
    /// The tarn timeline this cluster's WAL belongs to, as 32 hex digits.
    #[serde(with = "timeline_hex")]
    pub timeline_id: TimelineId,
    pub postgres_port: u16,
    pub safekeeper_ports: Vec<u16>,
    /// The GetPage@LSN port of the pageserver (absent in clusters created before it).
    #[serde(default)]
    pub pageserver_port: Option<u16>,
    /// The pid of the `tarn up` supervising the cluster, while one runs.
    pub supervisor_pid: Option<u32>,
    /// By component name: `postgres`, `proposer`, `safekeeper-1`, ...
    pub components: BTreeMap<String, ComponentRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// The pid it was started with (Postgres: the postmaster), `None` once `tarn up`
    /// stopped it. A component restarted by hand is not recorded.
    pub pid: Option<u32>,
    /// The full command line that starts it again (argv[0] is an absolute path, or
    /// `runuser` for a Postgres that runs as the postgres user).
    pub argv: Vec<String>,
    /// Where its stdout and stderr go.
    pub log_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid tarn.json: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}; this tarn reads version {FORMAT_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

impl ClusterManifest {
    /// Reads `D/tarn.json`; `Ok(None)` if it does not exist.
    pub fn read(layout: &ClusterLayout) -> Result<Option<Self>, ManifestError> {
        let path = layout.manifest_path();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(source) if source.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        let manifest: Self =
            serde_json::from_str(&text).map_err(|source| ManifestError::Parse {
                path: path.clone(),
                source,
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ManifestError::Version {
                path,
                found: manifest.format_version,
            });
        }
        Ok(Some(manifest))
    }

    /// Replaces `D/tarn.json` atomically and durably.
    pub fn write(&self, layout: &ClusterLayout) -> Result<(), ManifestError> {
        let path = layout.manifest_path();
        let write_error = |source| ManifestError::Write {
            path: path.clone(),
            source,
        };
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|error| write_error(io::Error::other(error)))?;
        text.push('\n');
        write_atomically(&path, text.as_bytes()).map_err(write_error)
    }

    pub fn component(&self, name: &str) -> Option<&ComponentRecord> {
        self.components.get(name)
    }
}

/// Writes `bytes` to a temporary sibling of `path`, fsyncs it, renames it over `path` and
/// fsyncs the directory, so a crash leaves either the old file or the new one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, path)?;
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

mod timeline_hex {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use tarn_wal::TimelineId;

    pub fn serialize<S: Serializer>(id: &TimelineId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TimelineId, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json() {
        let dir = std::env::temp_dir().join(format!("tarn-manifest-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("create test dir");
        let layout = ClusterLayout::new(&dir);
        assert!(matches!(ClusterManifest::read(&layout), Ok(None)));
        let mut components = BTreeMap::new();
        components.insert(
            "proposer".to_string(),
            ComponentRecord {
                pid: Some(42),
                argv: vec!["/bin/tarn".into(), "proposer".into()],
                log_path: dir.join("logs/proposer.log"),
            },
        );
        let manifest = ClusterManifest {
            format_version: FORMAT_VERSION,
            system_id: 7_412_345_678_901_234_567,
            timeline_id: TimelineId(0x0123_4567_89ab_cdef_0011_2233_4455_6677),
            postgres_port: 55432,
            safekeeper_ports: vec![55433, 55434, 55435],
            pageserver_port: Some(55436),
            supervisor_pid: None,
            components,
        };
        manifest.write(&layout).expect("write");
        let text = fs::read_to_string(layout.manifest_path()).expect("read back");
        assert!(
            text.contains("\"0123456789abcdef0011223344556677\""),
            "{text}"
        );
        let read = ClusterManifest::read(&layout)
            .expect("read")
            .expect("present");
        assert_eq!(read, manifest);
        fs::remove_dir_all(&dir).expect("clean up");
    }
}
