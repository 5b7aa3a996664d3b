//! The read path: the versions of a key needed to build it at an LSN.
//!
//! 1. In-memory layers, newest first: their versions are newer than anything on disk.
//! 2. Image layers at or below the LSN, newest first, by key directory alone (no IO):
//!    the first that has the key's image — or, if dense, knows the key has no version —
//!    is the *floor*.
//! 3. Delta layers holding the key with versions above the floor, newest first (they
//!    form one LSN-ordered stack per key).
//!
//! Every step stops at the first image or will_init delta. Each layer consulted counts
//! in [`ReadStats::layers_visited`]; each block read in [`ReadStats::blocks_read`].

use std::collections::BTreeSet;
use std::ops::Range;

use tarn_wal::Lsn;

use super::Result;
use super::durable::corrupt;
use super::image_layer::{ImageCoverage, ImageLayer};
use super::key::Key;
use super::layer_map::LayerMap;
use super::memory_layer::InMemoryLayer;
use super::value::{ReconstructData, Value};

/// The cost of one read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Layers (in-memory or on-disk) consulted for the key.
    pub layers_visited: u32,
    /// Layer file blocks read (and checksummed).
    pub blocks_read: u32,
    /// Deltas returned.
    pub deltas: u32,
}

/// Totals and maxima of [`ReadStats`] over the reads of a store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadMetrics {
    pub gets: u64,
    pub layers_visited: u64,
    pub max_layers_visited: u32,
    pub blocks_read: u64,
    pub deltas_returned: u64,
    pub max_deltas_returned: u32,
}

impl ReadMetrics {
    pub(crate) fn record(&mut self, stats: &ReadStats) {
        self.gets += 1;
        self.layers_visited += u64::from(stats.layers_visited);
        self.max_layers_visited = self.max_layers_visited.max(stats.layers_visited);
        self.blocks_read += u64::from(stats.blocks_read);
        self.deltas_returned += u64::from(stats.deltas);
        self.max_deltas_returned = self.max_deltas_returned.max(stats.deltas);
    }
}

/// The versions of `key` needed at `lsn`. `memory` is newest first.
pub(crate) fn get(
    memory: &[&InMemoryLayer],
    map: &LayerMap,
    key: Key,
    lsn: Lsn,
) -> Result<(ReconstructData, ReadStats)> {
    let mut stats = ReadStats::default();
    // Versions newest first; the search ends at the first initialising one.
    let mut newest_first: Vec<(Lsn, Value)> = Vec::new();

    for layer in memory.iter().filter(|layer| layer.start_lsn() <= lsn) {
        stats.layers_visited += 1;
        if layer.collect(key, lsn, &mut newest_first) {
            return Ok(finish(None, newest_first, stats));
        }
    }

    let mut floor: Option<(&ImageLayer, ImageCoverage)> = None;
    for image in map.images_for(key, lsn) {
        stats.layers_visited += 1;
        let coverage = image.coverage(key);
        if coverage != ImageCoverage::Unknown {
            floor = Some((image, coverage));
            break;
        }
    }
    let floor_lsn = floor.map(|(image, _)| image.lsn());

    let above_floor = floor_lsn.map_or(Lsn(0), |f| Lsn(f.0 + 1));
    for delta in map.deltas_for(key, floor_lsn, lsn) {
        stats.layers_visited += 1;
        let lo = above_floor.max(delta.lsn_range().start);
        if delta.collect(key, lo, lsn, &mut newest_first, &mut stats.blocks_read)? {
            return Ok(finish(None, newest_first, stats));
        }
    }

    let image = match floor {
        Some((layer, ImageCoverage::Image)) => {
            let image = layer
                .read_image(key, &mut stats.blocks_read)?
                .ok_or_else(|| {
                    corrupt(
                        layer.file().path(),
                        0,
                        format!("key directory lists {key} but its blocks do not"),
                    )
                })?;
            Some((layer.lsn(), image))
        }
        _ => None,
    };
    Ok(finish(image, newest_first, stats))
}

/// Turns versions collected newest first into [`ReconstructData`]: an image found among
/// them (necessarily the oldest) becomes the base.
fn finish(
    floor_image: Option<(Lsn, bytes::Bytes)>,
    mut newest_first: Vec<(Lsn, Value)>,
    mut stats: ReadStats,
) -> (ReconstructData, ReadStats) {
    let image = match newest_first.last() {
        Some((_, Value::Image(_))) => match newest_first.pop() {
            Some((lsn, Value::Image(image))) => Some((lsn, image)),
            _ => unreachable!("just matched an image"),
        },
        _ => floor_image,
    };
    newest_first.reverse();
    stats.deltas = newest_first.len() as u32;
    let data = ReconstructData {
        image,
        deltas: newest_first,
    };
    debug_assert!(data.deltas.iter().all(|(_, v)| !v.is_image()));
    debug_assert!(data.deltas.windows(2).all(|w| w[0].0 < w[1].0));
    (data, stats)
}

/// Keys in `range` with a version at or below `lsn`, ascending.
pub(crate) fn keys_at(
    memory: &[&InMemoryLayer],
    map: &LayerMap,
    range: &Range<Key>,
    lsn: Lsn,
) -> Vec<Key> {
    if range.is_empty() {
        return Vec::new();
    }
    let mut keys = BTreeSet::new();
    for layer in memory {
        keys.extend(layer.keys_at(range, lsn));
    }
    for delta in map.deltas() {
        if delta.lsn_range().start <= lsn {
            let infos = delta.file().keys_in(range);
            keys.extend(
                infos
                    .filter(|info| info.min_lsn <= lsn)
                    .map(|info| info.key),
            );
        }
    }
    for image in map.images() {
        if image.lsn() <= lsn {
            keys.extend(image.file().keys_in(range).map(|info| info.key));
        }
    }
    keys.into_iter().collect()
}

/// The newest LSN at which `key` was written (images made by compaction do not count:
/// they are not writes).
pub(crate) fn latest_lsn_of(memory: &[&InMemoryLayer], map: &LayerMap, key: Key) -> Option<Lsn> {
    if let Some(lsn) = memory.iter().find_map(|layer| layer.latest_lsn_of(key)) {
        return Some(lsn);
    }
    map.deltas()
        .iter()
        .filter(|delta| delta.key_range().contains(&key))
        .find_map(|delta| delta.key_info(key))
        .map(|info| info.max_lsn)
}
