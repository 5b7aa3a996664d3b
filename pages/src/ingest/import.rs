//! Import of a cleanly shut down PG15 data directory into an empty store, at one LSN:
//! the base state WAL is then ingested on top of (Postgres's own bootstrap writes the
//! catalogs without WAL, so a store must start from files).
//!
//! What is imported: every block of every relation fork in `global/` and `base/*/`
//! except the free space map (all-zero blocks are left out: a block within the size
//! without a version reads as zeros), the sizes, relation and database directories,
//! `pg_filenode.map` files, the `pg_xact` and `pg_multixact` SLRUs, prepared
//! transactions' state files, `pg_control` itself (for basebackups) and the checkpoint
//! from it. A data directory with tablespaces in `pg_tblspc/` is refused.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode};

use crate::page::BLCKSZ;
use crate::store::{Key, SlruKind, StoreError, TimelineStore, Value};

use super::slru::SLRU_PAGES_PER_SEGMENT;
use super::{
    CheckpointState, DEFAULTTABLESPACE_OID, DbDir, GLOBALTABLESPACE_OID, RelDir,
    SIZE_OF_CHECKPOINT, SizeValue, SlruDir, TwoPhaseDir,
};

/// RELSEG_SIZE: blocks per relation segment file.
pub const RELSEG_BLOCKS: u32 = 131_072;
/// PG_CONTROL_VERSION of PG15.
const PG_CONTROL_VERSION: u32 = 1300;
/// offsetof(ControlFileData, checkPointCopy).
const CHECKPOINT_COPY_OFFSET: usize = 40;
/// The relmap file's name.
const RELMAP_FILE_NAME: &str = "pg_filenode.map";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an import found and stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub databases: usize,
    pub relation_forks: usize,
    pub blocks: u64,
    pub zero_blocks_left_out: u64,
    pub fsm_files_left_out: usize,
    pub slru_pages: u64,
    pub prepared_transactions: usize,
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImportError + 'a {
    move |source| ImportError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, detail: impl Into<String>) -> ImportError {
    ImportError::Invalid {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Imports `data_dir` (cleanly shut down: its files are consistent) into `store` at
/// `lsn`, which must be above the store's last LSN.
pub fn import_data_dir(
    store: &mut TimelineStore,
    data_dir: &Path,
    lsn: Lsn,
) -> Result<ImportReport, ImportError> {
    let mut report = ImportReport::default();
    let tblspc = data_dir.join("pg_tblspc");
    if let Ok(mut entries) = fs::read_dir(&tblspc)
        && entries.next().is_some()
    {
        return Err(invalid(&tblspc, "tablespaces are not supported"));
    }

    let mut db_dir = DbDir::default();
    let mut dirs = vec![(GLOBALTABLESPACE_OID, 0, data_dir.join("global"))];
    let base = data_dir.join("base");
    for entry in fs::read_dir(&base).map_err(io_error("list", &base))? {
        let entry = entry.map_err(io_error("list", &base))?;
        let name = entry.file_name();
        let Some(db) = name.to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue; // pgsql_tmp and the like
        };
        dirs.push((DEFAULTTABLESPACE_OID, db, entry.path()));
    }
    for (spc, db, dir) in dirs {
        import_db_dir(store, spc, db, &dir, lsn, &mut report)?;
        db_dir.0.insert((spc, db));
        report.databases += 1;
    }
    store.put(Key::db_dir(), lsn, Value::Image(db_dir.encode().into()))?;

    for slru in [
        SlruKind::Clog,
        SlruKind::MultiXactOffsets,
        SlruKind::MultiXactMembers,
    ] {
        import_slru(
            store,
            slru,
            &data_dir.join(slru.dir_name()),
            lsn,
            &mut report,
        )?;
    }
    import_twophase(store, &data_dir.join("pg_twophase"), lsn, &mut report)?;

    let control_path = data_dir.join("global").join("pg_control");
    let control = fs::read(&control_path).map_err(io_error("read", &control_path))?;
    let version = control
        .get(8..12)
        .map(|v| u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
        .ok_or_else(|| invalid(&control_path, "too short"))?;
    if version != PG_CONTROL_VERSION {
        return Err(invalid(
            &control_path,
            format!("pg_control_version {version}, expected {PG_CONTROL_VERSION} (PG15)"),
        ));
    }
    let checkpoint = control
        .get(CHECKPOINT_COPY_OFFSET..CHECKPOINT_COPY_OFFSET + SIZE_OF_CHECKPOINT)
        .ok_or_else(|| invalid(&control_path, "too short for checkPointCopy"))
        .and_then(|bytes| {
            CheckpointState::from_bytes(bytes).map_err(|e| invalid(&control_path, e.to_string()))
        })?;
    store.put(
        Key::checkpoint(),
        lsn,
        Value::Image(Bytes::copy_from_slice(checkpoint.as_bytes())),
    )?;
    // The whole file: a basebackup rewrites it (system id, settings, sizes stay).
    store.put(Key::control_file(), lsn, Value::Image(control.into()))?;
    Ok(report)
}

/// A relation file name: `<relfilenode>[_fork][.segment]`.
fn parse_relation_file(name: &str) -> Option<(u32, Option<ForkNumber>, u32)> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, segment.parse::<u32>().ok()?),
        None => (name, 0),
    };
    let (rel, fork) = match stem.split_once('_') {
        Some((rel, "vm")) => (rel, Some(ForkNumber::VisibilityMap)),
        Some((rel, "init")) => (rel, Some(ForkNumber::Init)),
        Some((rel, "fsm")) => (rel, None),
        Some(_) => return None,
        None => (stem, Some(ForkNumber::Main)),
    };
    if rel.is_empty() || !rel.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((rel.parse().ok()?, fork, segment))
}

fn import_db_dir(
    store: &mut TimelineStore,
    spc: u32,
    db: u32,
    dir: &Path,
    lsn: Lsn,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    // (rel, fork) -> segments, in order.
    let mut files: BTreeMap<(u32, ForkNumber), BTreeMap<u32, PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name == RELMAP_FILE_NAME {
            let path = entry.path();
            let map = fs::read(&path).map_err(io_error("read", &path))?;
            store.put(Key::relmap_file(spc, db), lsn, Value::Image(map.into()))?;
            continue;
        }
        match parse_relation_file(name) {
            Some((rel, Some(fork), segment)) => {
                files
                    .entry((rel, fork))
                    .or_default()
                    .insert(segment, entry.path());
            }
            Some((_, None, _)) => report.fsm_files_left_out += 1,
            None => {} // PG_VERSION, pg_internal.init, temporary relations, ...
        }
    }
    let mut rel_dir = RelDir::default();
    for ((rel_node, fork), segments) in files {
        let rel = RelFileNode {
            spc_node: spc,
            db_node: db,
            rel_node,
        };
        let mut nblocks = 0u32;
        for (segment, path) in segments {
            if segment * RELSEG_BLOCKS != nblocks {
                return Err(invalid(
                    &path,
                    format!("segment {segment} follows {nblocks} blocks"),
                ));
            }
            nblocks += import_file_pages(store, &path, lsn, report, |blk| {
                Key::rel_block(rel, fork, segment * RELSEG_BLOCKS + blk)
            })?;
        }
        store.put(
            Key::rel_size(rel, fork),
            lsn,
            Value::Image(SizeValue::Exists(nblocks).encode().into()),
        )?;
        rel_dir.0.insert((rel_node, fork));
        report.relation_forks += 1;
    }
    store.put(
        Key::rel_dir(spc, db),
        lsn,
        Value::Image(rel_dir.encode().into()),
    )?;
    Ok(())
}

/// Stores every non-zero page of a file as an image; returns its pages.
fn import_file_pages(
    store: &mut TimelineStore,
    path: &Path,
    lsn: Lsn,
    report: &mut ImportReport,
    key_of: impl Fn(u32) -> Key,
) -> Result<u32, ImportError> {
    let mut file = File::open(path).map_err(io_error("open", path))?;
    let len = file.metadata().map_err(io_error("stat", path))?.len();
    if len % BLCKSZ as u64 != 0 {
        return Err(invalid(
            path,
            format!("{len} bytes is not a whole number of pages"),
        ));
    }
    let pages = u32::try_from(len / BLCKSZ as u64).map_err(|_| invalid(path, "too large"))?;
    let mut buf = vec![0u8; BLCKSZ];
    for blk in 0..pages {
        file.read_exact(&mut buf).map_err(io_error("read", path))?;
        if buf.iter().all(|b| *b == 0) {
            report.zero_blocks_left_out += 1;
            continue;
        }
        store.put(key_of(blk), lsn, Value::Image(Bytes::copy_from_slice(&buf)))?;
        report.blocks += 1;
    }
    Ok(pages)
}

fn import_slru(
    store: &mut TimelineStore,
    slru: SlruKind,
    dir: &Path,
    lsn: Lsn,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let mut segments = BTreeSet::new();
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(segno) = name
            .to_str()
            .and_then(|name| u32::from_str_radix(name, 16).ok())
        else {
            continue;
        };
        let path = entry.path();
        let pages = import_file_pages(store, &path, lsn, report, |blk| {
            Key::slru_page(slru, segno, blk)
        })?;
        if pages > SLRU_PAGES_PER_SEGMENT {
            return Err(invalid(&path, format!("{pages} pages in one SLRU segment")));
        }
        report.slru_pages += u64::from(pages);
        store.put(
            Key::slru_segment_size(slru, segno),
            lsn,
            Value::Image(SizeValue::Exists(pages).encode().into()),
        )?;
        segments.insert(segno);
    }
    store.put(
        Key::slru_dir(slru),
        lsn,
        Value::Image(SlruDir(segments).encode().into()),
    )?;
    Ok(())
}

/// State files of prepared transactions: their contents without the trailing CRC
/// (what a PREPARE record's data is), after checking the CRC.
fn import_twophase(
    store: &mut TimelineStore,
    dir: &Path,
    lsn: Lsn,
    report: &mut ImportReport,
) -> Result<(), ImportError> {
    let mut xids = BTreeSet::new();
    if dir.exists() {
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let entry = entry.map_err(io_error("list", dir))?;
            let name = entry.file_name();
            let Some(xid) = name
                .to_str()
                .and_then(|name| u32::from_str_radix(name, 16).ok())
            else {
                continue;
            };
            let path = entry.path();
            let bytes = fs::read(&path).map_err(io_error("read", &path))?;
            let Some(split) = bytes.len().checked_sub(4) else {
                return Err(invalid(&path, "shorter than its CRC"));
            };
            let (data, crc) = bytes.split_at(split);
            if crc32c::crc32c(data).to_le_bytes() != crc {
                return Err(invalid(&path, "CRC mismatch"));
            }
            store.put(
                Key::twophase_file(xid),
                lsn,
                Value::Image(Bytes::copy_from_slice(data)),
            )?;
            xids.insert(xid);
            report.prepared_transactions += 1;
        }
    }
    store.put(
        Key::twophase_dir(),
        lsn,
        Value::Image(TwoPhaseDir(xids).encode().into()),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_file_names() {
        assert_eq!(
            parse_relation_file("16384"),
            Some((16384, Some(ForkNumber::Main), 0))
        );
        assert_eq!(
            parse_relation_file("16384_vm"),
            Some((16384, Some(ForkNumber::VisibilityMap), 0))
        );
        assert_eq!(parse_relation_file("16384_fsm"), Some((16384, None, 0)));
        assert_eq!(
            parse_relation_file("16384_init.2"),
            Some((16384, Some(ForkNumber::Init), 2))
        );
        assert_eq!(
            parse_relation_file("16384.1"),
            Some((16384, Some(ForkNumber::Main), 1))
        );
        for other in [
            "PG_VERSION",
            "pg_internal.init",
            "t3_16384",
            "16384_xx",
            "_vm",
            "1.x",
        ] {
            assert_eq!(parse_relation_file(other), None, "{other}");
        }
    }
}
