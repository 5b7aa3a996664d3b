//! The layer map: the set of on-disk layers of a timeline, and which of them may hold a
//! key's versions in an LSN window. Delta layers are kept newest first by LSN start,
//! image layers newest first by LSN. It enforces the invariant reads rely on: delta
//! layers whose key ranges overlap have disjoint LSN ranges, so for each key the delta
//! layers form a single stack in LSN order.
//!
//! Lookups scan the lists (the map is small: compaction bounds L0 layers, and each
//! level 1 generation adds a handful of layers); an interval tree can replace the scan
//! without changing the interface.

use std::ops::Range;
use std::sync::Arc;

use tarn_wal::Lsn;

use super::delta_layer::DeltaLayer;
use super::image_layer::ImageLayer;
use super::key::Key;

#[derive(Clone, Default)]
pub(crate) struct LayerMap {
    /// Newest first by LSN range start.
    deltas: Vec<Arc<DeltaLayer>>,
    /// Newest first by LSN, dense before sparse at equal LSNs.
    images: Vec<Arc<ImageLayer>>,
}

fn ranges_overlap<T: Ord>(a: &Range<T>, b: &Range<T>) -> bool {
    a.start < b.end && b.start < a.end
}

impl LayerMap {
    /// Adds a delta layer; refuses one that overlaps another in both keys and LSNs, or
    /// whose name is taken.
    pub fn insert_delta(&mut self, layer: Arc<DeltaLayer>) -> Result<(), String> {
        let name = layer.summary().file_name();
        if self.contains(&name) {
            return Err(format!("layer {name} is listed twice"));
        }
        if let Some(other) = self.deltas.iter().find(|other| {
            ranges_overlap(other.key_range(), layer.key_range())
                && ranges_overlap(other.lsn_range(), layer.lsn_range())
        }) {
            return Err(format!(
                "delta layer {name} overlaps delta layer {} in keys and LSNs",
                other.summary().file_name()
            ));
        }
        let start = layer.lsn_range().start;
        let at = self.deltas.partition_point(|d| d.lsn_range().start > start);
        self.deltas.insert(at, layer);
        Ok(())
    }

    /// Adds an image layer; refuses one whose name is taken.
    pub fn insert_image(&mut self, layer: Arc<ImageLayer>) -> Result<(), String> {
        let name = layer.summary().file_name();
        if self.contains(&name) {
            return Err(format!("layer {name} is listed twice"));
        }
        // Newest first; at equal LSNs dense layers first, so a read stops at them before
        // consulting a sparse layer of the same LSN.
        let rank = |i: &ImageLayer| (i.lsn(), i.is_dense());
        let new_rank = rank(&layer);
        let at = self.images.partition_point(|i| rank(i) > new_rank);
        self.images.insert(at, layer);
        Ok(())
    }

    /// Removes the layer with file name `name`; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.deltas.len() + self.images.len();
        self.deltas.retain(|d| d.summary().file_name() != name);
        self.images.retain(|i| i.summary().file_name() != name);
        before != self.deltas.len() + self.images.len()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.layer_names().iter().any(|n| n == name)
    }

    pub fn layer_names(&self) -> Vec<String> {
        let deltas = self.deltas.iter().map(|d| d.summary().file_name());
        deltas
            .chain(self.images.iter().map(|i| i.summary().file_name()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.deltas.len() + self.images.len()
    }

    /// The lowest LSN any layer holds a version at.
    pub fn lowest_lsn(&self) -> Option<Lsn> {
        let deltas = self.deltas.iter().map(|d| d.lsn_range().start);
        let images = self.images.iter().map(|i| i.lsn());
        deltas.chain(images).min()
    }

    pub fn deltas(&self) -> &[Arc<DeltaLayer>] {
        &self.deltas
    }

    pub fn images(&self) -> &[Arc<ImageLayer>] {
        &self.images
    }

    /// Level 0 delta layers, oldest first.
    pub fn l0_deltas(&self) -> Vec<Arc<DeltaLayer>> {
        self.deltas
            .iter()
            .rev()
            .filter(|d| d.is_l0())
            .cloned()
            .collect()
    }

    /// Delta layers whose key range holds `key` and that may hold versions with LSN in
    /// `above+1..=hi` (`above` excluded; `None` is below everything), newest first.
    pub fn deltas_for(
        &self,
        key: Key,
        above: Option<Lsn>,
        hi: Lsn,
    ) -> impl Iterator<Item = &Arc<DeltaLayer>> {
        self.deltas.iter().filter(move |d| {
            d.key_range().contains(&key)
                && d.lsn_range().start <= hi
                && above.is_none_or(|floor| d.summary().top_lsn() > floor)
        })
    }

    /// Image layers whose key range holds `key`, at or below `hi`, newest first.
    pub fn images_for(&self, key: Key, hi: Lsn) -> impl Iterator<Item = &Arc<ImageLayer>> {
        self.images
            .iter()
            .filter(move |i| i.key_range().contains(&key) && i.lsn() <= hi)
    }
}
