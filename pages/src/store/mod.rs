//! The versioned key-value page store of one timeline: every page's history as images
//! and deltas, readable at any LSN. Values are opaque here; redo lives elsewhere.
//!
//! Layering, bottom up (each module owns one concept):
//! - [`key`]: the 18-byte keyspace (relation blocks and sizes, SLRU pages, relmap,
//!   directories, checkpoint, control file), ordered bytewise.
//! - [`value`]: [`Value`] (image or delta) and [`ReconstructData`], what a read returns.
//! - `durable`: atomic file replacement (temp, fsync, rename, dir fsync) and positioned
//!   reads with errors that name the file.
//! - `layer_file`: the on-disk format shared by all layer files: checksummed zero-copy
//!   rkyv blocks of `(key, lsn, value)` entries, an index of blocks and keys, a footer.
//! - `memory_layer`, `delta_layer`, `image_layer`: the three kinds of layers.
//! - `layer_map`: which on-disk layers exist and which of them a read must visit.
//! - `read_path`: `get(key, lsn)` over in-memory and on-disk layers.
//! - `compaction`: L0 → key-partitioned L1 merges and image creation.
//! - `metadata`: the timeline's commit record (durable LSN and its list of layers).
//! - [`timeline_store`]: [`TimelineStore`], the public API tying it together.
//!
//! Everything is synchronous `std::fs` IO driven by `&mut self`; there is no global
//! state, so a per-core executor can own one store per timeline.

mod compaction;
mod delta_layer;
mod durable;
mod image_layer;
pub mod key;
mod layer_file;
mod layer_map;
mod memory_layer;
mod metadata;
mod read_path;
pub mod timeline_store;
pub mod value;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use tarn_wal::Lsn;

pub use compaction::CompactionReport;
pub use key::{KEY_BYTES, Key, KeyClass, ParseKeyError, SlruKind};
pub use read_path::{ReadMetrics, ReadStats};
pub use timeline_store::{Ancestor, MaterializeError, StoreConfig, TimelineStore};
pub use value::{ReconstructData, Value};

/// Errors of the page store. Corruption always names the file and byte offset.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt file {path} at offset {offset}: {detail}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        detail: String,
    },
    #[error("{path} is not a timeline directory: it has no metadata file")]
    NotATimeline { path: PathBuf },
    #[error("{path} already holds a timeline")]
    TimelineExists { path: PathBuf },
    #[error("put of {key:?} at {lsn} is out of order: puts must be at or above {floor}")]
    OutOfOrder { key: Key, lsn: Lsn, floor: Lsn },
    #[error("put of {key:?} at {lsn}: the key already has a value at that LSN")]
    DuplicateVersion { key: Key, lsn: Lsn },
    #[error("put of {key:?} at {lsn}: value of {len} bytes exceeds the limit of {limit}")]
    ValueTooLarge {
        key: Key,
        lsn: Lsn,
        len: usize,
        limit: usize,
    },
    #[error("freeze at {up_to} is below LSN {floor} already in the store")]
    FreezeBelow { up_to: Lsn, floor: Lsn },
    #[error("timeline {timeline_id} is in use (its store is borrowed for writing)")]
    AncestorBusy { timeline_id: tarn_wal::TimelineId },
    #[error(
        "cannot branch timeline {timeline_id} at {lsn}: its history holds {oldest} to {newest}"
    )]
    BranchOutsideHistory {
        timeline_id: tarn_wal::TimelineId,
        lsn: Lsn,
        oldest: Lsn,
        newest: Lsn,
    },
    #[error("{path}: {detail}")]
    WrongAncestor { path: PathBuf, detail: String },
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("materializing {key:?} at {lsn} failed: {source}")]
    Materialize {
        key: Key,
        lsn: Lsn,
        source: MaterializeError,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
