//! Compaction keeps reads bounded. Once `l0_compaction_threshold` level 0 layers have
//! piled up, one pass:
//!
//! 1. **Merges** all L0 layers (k-way, by `(key, lsn)`, one block per input in memory)
//!    into level 1 delta layers over the same LSN span, cut at key boundaries every
//!    `target_layer_bytes`, so they partition the keyspace.
//! 2. **Dense images**: for each new partition, if more than
//!    `max_layers_above_dense_image` on-disk layers overlap it above its newest dense
//!    image layer (one more is counted for the sparse layer step 3 may add), writes a
//!    dense image layer of the partition at the durable LSN. A read at or above it then
//!    consults at most that many on-disk layers below the L0s, plus the dense layer.
//! 3. **Sparse images** (per-key pushdown): every other key the merge touched whose
//!    deltas above its newest image exceed `image_threshold_deltas` (counted from key
//!    directories, without IO) gets an image at the durable LSN. A read at or above it
//!    then returns at most that many deltas from level 1 layers.
//!
//! Images are built by the caller's materializer (redo) from [`ReconstructData`] read
//! at the durable LSN. It sees every image written, also those of keys without deltas
//! above their image (it returns that image unchanged), so the caller can track them.
//! Nothing is visible until the caller commits the outcome by writing the metadata
//! file; on error the files written so far are removed.

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use tarn_wal::Lsn;

use super::delta_layer::{DeltaLayer, LEVEL_COMPACTED};
use super::durable::{self, TempNames};
use super::image_layer::{ImageCoverage, ImageLayer};
use super::key::Key;
use super::layer_file::{LayerKind, LayerSummary, LayerWriter};
use super::layer_map::LayerMap;
use super::read_path;
use super::timeline_store::Ancestor;
use super::timeline_store::{MaterializeError, StoreConfig};
use super::value::{ReconstructData, Value};
use super::{Result, StoreError};

/// Builds a key's image at an LSN from its versions (the redo layer).
pub(crate) type Materializer<'a> =
    &'a mut dyn FnMut(Key, Lsn, ReconstructData) -> std::result::Result<Bytes, MaterializeError>;

/// What one compaction did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionReport {
    pub l0_layers_merged: usize,
    pub delta_layers_written: usize,
    pub dense_image_layers_written: usize,
    pub sparse_image_layers_written: usize,
    /// Images written (dense and sparse).
    pub images_written: usize,
    /// Images that needed deltas replayed (the others were unchanged images).
    pub images_materialized: usize,
    pub bytes_written: u64,
}

/// Layers to add and remove; committed by the caller.
pub(crate) struct CompactionOutcome {
    pub added_deltas: Vec<Arc<DeltaLayer>>,
    pub added_images: Vec<Arc<ImageLayer>>,
    pub removed: Vec<String>,
    pub report: CompactionReport,
}

struct Compactor<'a> {
    dir: &'a Path,
    config: &'a StoreConfig,
    temp_names: &'a mut TempNames,
    /// A branch's parent: images of keys whose base lies below the branch point are
    /// built from the parent's versions too.
    ancestor: Option<&'a Ancestor>,
    /// Every file finished so far, removed if the compaction fails.
    written: Vec<PathBuf>,
    report: CompactionReport,
}

/// Compacts if enough L0 layers piled up; `durable_lsn` is the top of the on-disk data.
pub(crate) fn compact(
    dir: &Path,
    map: &LayerMap,
    durable_lsn: Lsn,
    config: &StoreConfig,
    temp_names: &mut TempNames,
    ancestor: Option<&Ancestor>,
    materialize: Materializer<'_>,
) -> Result<Option<CompactionOutcome>> {
    let l0 = map.l0_deltas();
    if l0.len() < config.l0_compaction_threshold {
        return Ok(None);
    }
    let mut compactor = Compactor {
        dir,
        config,
        temp_names,
        ancestor,
        written: Vec::new(),
        report: CompactionReport::default(),
    };
    match compactor.run(map, &l0, durable_lsn, materialize) {
        Ok(outcome) => Ok(Some(outcome)),
        Err(e) => {
            for path in &compactor.written {
                let _ = durable::remove_file(path);
            }
            Err(e)
        }
    }
}

impl Compactor<'_> {
    fn run(
        &mut self,
        map: &LayerMap,
        l0: &[Arc<DeltaLayer>],
        durable_lsn: Lsn,
        materialize: Materializer<'_>,
    ) -> Result<CompactionOutcome> {
        let merged = self.merge(l0)?;
        self.report.l0_layers_merged = l0.len();
        self.report.delta_layers_written = merged.len();

        let mut after = map.clone();
        let removed: Vec<String> = l0.iter().map(|d| d.summary().file_name()).collect();
        for name in &removed {
            assert!(after.remove(name));
        }
        for layer in &merged {
            after
                .insert_delta(layer.clone())
                .unwrap_or_else(|e| panic!("compaction output breaks the layer map: {e}"));
        }

        let mut added_images = Vec::new();
        let mut dense_ranges = Vec::new();
        for layer in &merged {
            let range = layer.key_range().clone();
            if layers_above_dense_image(&after, &range) <= self.config.max_layers_above_dense_image
            {
                continue;
            }
            if let Some(dense) =
                self.write_dense_images(&after, &range, durable_lsn, materialize)?
            {
                added_images.push(dense);
                dense_ranges.push(range);
            }
        }
        for dense in &added_images {
            after
                .insert_image(dense.clone())
                .unwrap_or_else(|e| panic!("dense image layer breaks the layer map: {e}"));
        }

        let candidates = merged
            .iter()
            .flat_map(|layer| layer.file().keys_in(&Key::all()).map(|info| info.key));
        let hot: Vec<Key> = candidates
            .filter(|key| !dense_ranges.iter().any(|range| range.contains(key)))
            .filter(|key| {
                deltas_above_image(&after, *key, durable_lsn)
                    > self.config.image_threshold_deltas as u64
            })
            .collect();
        added_images.extend(self.write_sparse_images(&after, &hot, durable_lsn, materialize)?);

        Ok(CompactionOutcome {
            added_deltas: merged,
            added_images,
            removed,
            report: self.report,
        })
    }

    /// Merges L0 layers (consecutive in LSN, oldest first) into level 1 layers that
    /// partition the keyspace.
    fn merge(&mut self, l0: &[Arc<DeltaLayer>]) -> Result<Vec<Arc<DeltaLayer>>> {
        for pair in l0.windows(2) {
            assert!(
                pair[0].lsn_range().end <= pair[1].lsn_range().start,
                "L0 layers out of LSN order"
            );
        }
        let lsn_range = l0[0].lsn_range().start..l0[l0.len() - 1].lsn_range().end;
        let mut cursors: Vec<_> = l0.iter().map(|layer| layer.cursor()).collect();
        let mut heads = Vec::with_capacity(cursors.len());
        for cursor in &mut cursors {
            heads.push(cursor.next_entry()?);
        }
        let mut outputs = Vec::new();
        let mut partition_start = Key::MIN;
        let mut writer = self.writer()?;
        // The smallest head each time; inputs are few (the L0 threshold), so a scan beats
        // a heap.
        while let Some(i) = (0..heads.len())
            .filter(|&i| heads[i].is_some())
            .min_by_key(|&i| heads[i].as_ref().map(|(key, lsn, _)| (*key, *lsn)))
        {
            let (key, lsn, value) = heads[i].take().expect("chosen head is present");
            heads[i] = cursors[i].next_entry()?;
            if writer.bytes() >= self.config.target_layer_bytes && writer.last_key() != Some(key) {
                let full = std::mem::replace(&mut writer, self.writer()?);
                outputs.push(self.finish_delta(full, partition_start..key, lsn_range.clone())?);
                partition_start = key;
            }
            writer.push(key, lsn, &value)?;
        }
        // L0 layers are never empty, and a writer is replaced only right before a push.
        assert!(
            !writer.is_empty(),
            "merging non-empty L0 layers produced nothing"
        );
        outputs.push(self.finish_delta(writer, partition_start..Key::MAX, lsn_range)?);
        Ok(outputs)
    }

    fn writer(&mut self) -> Result<LayerWriter> {
        LayerWriter::create(
            self.temp_names.next_path(self.dir),
            self.config.target_block_bytes,
        )
    }

    fn finish_delta(
        &mut self,
        writer: LayerWriter,
        key_range: Range<Key>,
        lsn_range: Range<Lsn>,
    ) -> Result<Arc<DeltaLayer>> {
        let summary = LayerSummary {
            kind: LayerKind::Delta,
            level: LEVEL_COMPACTED,
            key_range,
            lsn_range,
        };
        let file = writer.finish(summary, self.dir)?;
        self.written.push(file.path().to_path_buf());
        self.report.bytes_written += file.file_bytes();
        Ok(Arc::new(DeltaLayer::new(file)))
    }

    fn finish_image(
        &mut self,
        writer: LayerWriter,
        kind: LayerKind,
        key_range: Range<Key>,
        lsn: Lsn,
    ) -> Result<Arc<ImageLayer>> {
        let summary = LayerSummary {
            kind,
            level: 0,
            key_range,
            lsn_range: lsn..Lsn(lsn.0 + 1),
        };
        let file = writer.finish(summary, self.dir)?;
        self.written.push(file.path().to_path_buf());
        self.report.bytes_written += file.file_bytes();
        match kind {
            LayerKind::DenseImage => self.report.dense_image_layers_written += 1,
            _ => self.report.sparse_image_layers_written += 1,
        }
        Ok(Arc::new(ImageLayer::new(file)))
    }

    /// The image of `key` at `lsn`, or `None` if it has no version there.
    fn image_at(
        &mut self,
        map: &LayerMap,
        key: Key,
        lsn: Lsn,
        materialize: Materializer<'_>,
    ) -> Result<Option<Bytes>> {
        let (mut data, _) = read_path::get(&[], map, key, lsn)?;
        if let Some(ancestor) = self.ancestor {
            data = ancestor.complete(key, lsn, data)?;
        }
        if data.is_empty() {
            return Ok(None);
        }
        if !data.deltas.is_empty() {
            self.report.images_materialized += 1;
        }
        materialize(key, lsn, data)
            .map(Some)
            .map_err(|source| StoreError::Materialize { key, lsn, source })
    }

    /// A dense image layer of `range` at `lsn`: the image of every key with a version.
    fn write_dense_images(
        &mut self,
        map: &LayerMap,
        range: &Range<Key>,
        lsn: Lsn,
        materialize: Materializer<'_>,
    ) -> Result<Option<Arc<ImageLayer>>> {
        let mut writer = self.writer()?;
        for key in keys_with_versions(map, range, lsn) {
            if let Some(image) = self.image_at(map, key, lsn, materialize)? {
                writer.push(key, lsn, &Value::Image(image))?;
                self.report.images_written += 1;
            }
        }
        if writer.is_empty() {
            return Ok(None);
        }
        self.finish_image(writer, LayerKind::DenseImage, range.clone(), lsn)
            .map(Some)
    }

    /// Sparse image layers holding the images of `keys` (ascending) at `lsn`, cut every
    /// `target_layer_bytes`.
    fn write_sparse_images(
        &mut self,
        map: &LayerMap,
        keys: &[Key],
        lsn: Lsn,
        materialize: Materializer<'_>,
    ) -> Result<Vec<Arc<ImageLayer>>> {
        let mut layers = Vec::new();
        let mut writer: Option<(LayerWriter, Key)> = None;
        for &key in keys {
            let Some(image) = self.image_at(map, key, lsn, materialize)? else {
                continue;
            };
            if writer
                .as_ref()
                .is_some_and(|(w, _)| w.bytes() >= self.config.target_layer_bytes)
            {
                let (full, first) = writer.take().expect("checked above");
                let end = full.last_key().expect("non-empty").next();
                layers.push(self.finish_image(full, LayerKind::SparseImage, first..end, lsn)?);
            }
            if writer.is_none() {
                writer = Some((self.writer()?, key));
            }
            let (w, _) = writer.as_mut().expect("just set");
            w.push(key, lsn, &Value::Image(image))?;
            self.report.images_written += 1;
        }
        if let Some((last, first)) = writer {
            let end = last.last_key().expect("non-empty").next();
            layers.push(self.finish_image(last, LayerKind::SparseImage, first..end, lsn)?);
        }
        Ok(layers)
    }
}

/// The newest dense image layer whose key range holds all of `range`.
fn dense_floor<'a>(map: &'a LayerMap, range: &Range<Key>) -> Option<&'a Arc<ImageLayer>> {
    map.images().iter().find(|i| {
        i.is_dense() && i.key_range().start <= range.start && range.end <= i.key_range().end
    })
}

fn overlaps(a: &Range<Key>, b: &Range<Key>) -> bool {
    a.start < b.end && b.start < a.end
}

/// On-disk layers a read of a key in `range` may consult above the newest dense image
/// covering `range`, plus one for a sparse image layer this compaction may add.
fn layers_above_dense_image(map: &LayerMap, range: &Range<Key>) -> usize {
    let floor = dense_floor(map, range).map(|d| d.lsn());
    let above = |top: Lsn| floor.is_none_or(|f| top > f);
    let deltas = map
        .deltas()
        .iter()
        .filter(|d| overlaps(d.key_range(), range) && above(d.summary().top_lsn()))
        .count();
    let images = map
        .images()
        .iter()
        .filter(|i| overlaps(i.key_range(), range) && above(i.lsn()))
        .count();
    deltas + images + 1
}

/// Keys of `range` with a version at or below `lsn`: those of the newest dense image
/// covering `range` and of every layer above it.
fn keys_with_versions(map: &LayerMap, range: &Range<Key>, lsn: Lsn) -> BTreeSet<Key> {
    let floor = dense_floor(map, range);
    let floor_lsn = floor.map(|d| d.lsn());
    let mut keys: BTreeSet<Key> = floor
        .map(|d| d.file().keys_in(range).map(|info| info.key).collect())
        .unwrap_or_default();
    for delta in map.deltas() {
        if overlaps(delta.key_range(), range)
            && floor_lsn.is_none_or(|f| delta.summary().top_lsn() > f)
        {
            keys.extend(
                delta
                    .file()
                    .keys_in(range)
                    .filter(|i| i.min_lsn <= lsn)
                    .map(|i| i.key),
            );
        }
    }
    for image in map.images() {
        if overlaps(image.key_range(), range)
            && image.lsn() <= lsn
            && floor_lsn.is_none_or(|f| image.lsn() > f)
        {
            keys.extend(image.file().keys_in(range).map(|i| i.key));
        }
    }
    keys
}

/// Deltas of `key` above its newest image at or below `lsn`, from key directories
/// alone. A delta layer straddling the image counts whole, so this may overcount
/// (making an image early), never undercount.
fn deltas_above_image(map: &LayerMap, key: Key, lsn: Lsn) -> u64 {
    let floor = map
        .images_for(key, lsn)
        .find(|image| image.coverage(key) != ImageCoverage::Unknown)
        .map(|image| image.lsn());
    let mut count = 0u64;
    for delta in map.deltas_for(key, floor, lsn) {
        let Some(info) = delta.key_info(key) else {
            continue;
        };
        if let Some(init) = info.init_lsn
            && floor.is_none_or(|f| init > f)
        {
            return count + u64::from(info.deltas_to_init);
        }
        count += u64::from(info.entries);
    }
    count
}
