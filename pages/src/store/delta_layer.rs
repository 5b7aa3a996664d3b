//! Delta layers: every version (images and deltas) of the keys in a key range whose
//! LSNs fall in an LSN range. Level 0 layers come from flushing an in-memory layer and
//! span the whole keyspace; compaction merges them into level 1 layers that partition
//! the keyspace over the same LSN span. Two delta layers whose key ranges overlap never
//! overlap in LSN (the layer map checks it), so a key's versions live in exactly one
//! delta layer per LSN.

use std::ops::Range;

use tarn_wal::Lsn;

use super::Result;
use super::key::Key;
use super::layer_file::{EntryCursor, KeyInfo, LayerFile, LayerKind, LayerSummary};
use super::value::Value;

/// The level of delta layers written by flushes.
pub(crate) const LEVEL_FLUSHED: u8 = 0;
/// The level of delta layers written by compaction.
pub(crate) const LEVEL_COMPACTED: u8 = 1;

pub(crate) struct DeltaLayer {
    file: LayerFile,
}

impl DeltaLayer {
    pub fn new(file: LayerFile) -> DeltaLayer {
        assert_eq!(
            file.summary().kind,
            LayerKind::Delta,
            "{} is not a delta layer",
            file.path().display()
        );
        DeltaLayer { file }
    }

    pub fn summary(&self) -> &LayerSummary {
        self.file.summary()
    }

    pub fn file(&self) -> &LayerFile {
        &self.file
    }

    pub fn key_range(&self) -> &Range<Key> {
        &self.summary().key_range
    }

    pub fn lsn_range(&self) -> &Range<Lsn> {
        &self.summary().lsn_range
    }

    pub fn is_l0(&self) -> bool {
        self.summary().level == LEVEL_FLUSHED
    }

    pub fn key_info(&self, key: Key) -> Option<KeyInfo> {
        self.file.key_info(key)
    }

    /// See [`LayerFile::collect`].
    pub fn collect(
        &self,
        key: Key,
        lo: Lsn,
        hi: Lsn,
        out: &mut Vec<(Lsn, Value)>,
        blocks_read: &mut u32,
    ) -> Result<bool> {
        self.file.collect(key, lo, hi, out, blocks_read)
    }

    pub fn cursor(&self) -> EntryCursor<'_> {
        self.file.cursor()
    }
}
