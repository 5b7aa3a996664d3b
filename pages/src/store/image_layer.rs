//! Image layers: images of keys at one LSN, made by compaction so that reads stop early.
//! A *sparse* image layer holds images of the keys whose deltas piled up (per-key image
//! pushdown): a key missing from it says nothing. A *dense* one holds an image of every
//! key of its key range that has any version at or below its LSN: a key missing from it
//! had none, so a read stops there too.

use std::ops::Range;

use bytes::Bytes;
use tarn_wal::Lsn;

use super::Result;
use super::key::Key;
use super::layer_file::{LayerFile, LayerKind, LayerSummary};
use super::value::Value;

pub(crate) struct ImageLayer {
    file: LayerFile,
}

/// What an image layer knows of a key, from its key directory alone (no IO).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ImageCoverage {
    /// The layer holds the key's image at its LSN.
    Image,
    /// Dense layer without the key: the key has no version at or below the layer's LSN.
    NoVersion,
    /// Sparse layer without the key (or a key outside its range): look further down.
    Unknown,
}

impl ImageLayer {
    pub fn new(file: LayerFile) -> ImageLayer {
        assert!(
            file.summary().kind.is_image(),
            "{} is not an image layer",
            file.path().display()
        );
        ImageLayer { file }
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

    /// The LSN of every image in the layer.
    pub fn lsn(&self) -> Lsn {
        self.summary().image_lsn()
    }

    pub fn is_dense(&self) -> bool {
        self.summary().kind == LayerKind::DenseImage
    }

    pub fn coverage(&self, key: Key) -> ImageCoverage {
        if !self.key_range().contains(&key) {
            ImageCoverage::Unknown
        } else if self.file.key_info(key).is_some() {
            ImageCoverage::Image
        } else if self.is_dense() {
            ImageCoverage::NoVersion
        } else {
            ImageCoverage::Unknown
        }
    }

    /// The key's image, if the layer has one.
    pub fn read_image(&self, key: Key, blocks_read: &mut u32) -> Result<Option<Bytes>> {
        let mut out = Vec::with_capacity(1);
        let lsn = self.lsn();
        self.file.collect(key, lsn, lsn, &mut out, blocks_read)?;
        Ok(out.pop().map(|(_, value)| match value {
            Value::Image(image) => image,
            Value::Delta { .. } => {
                unreachable!("block validation admits only images in image layers")
            }
        }))
    }
}
