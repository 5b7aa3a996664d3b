//! Restoring a full-page image: decompress (pglz, LZ4 or zstd) and re-insert the hole
//! as zeros. Mirrors RestoreBlockImage (xlogreader.c), but also requires that
//! decompression produce exactly the page minus its hole (Postgres checks that only
//! for pglz), so a short LZ4 or zstd output cannot leave stale bytes in the page.

use std::cell::RefCell;

use super::pglz::{PglzError, pglz_decompress};
use super::{BLCKSZ, BlockImage, ImageCompression, RecordBytes};

/// Why a page image did not restore. Kept small (lengths as u32, boxed detail): it is
/// carried inside redo and ingest errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("hole at offset {hole_offset} of {hole_length} bytes does not fit in a page")]
    HoleOutOfPage { hole_offset: u16, hole_length: u16 },
    #[error(
        "uncompressed image of {stored} bytes with a {hole_length}-byte hole is not a \
         {BLCKSZ}-byte page"
    )]
    UncompressedLength { stored: u32, hole_length: u16 },
    #[error("pglz image of {stored} bytes does not decompress to {expected} bytes: {source}")]
    Pglz {
        stored: u32,
        expected: u32,
        source: PglzError,
    },
    #[error("{method} image of {stored} bytes does not decompress to {expected} bytes: {detail}")]
    Decompress {
        method: &'static str,
        stored: u32,
        expected: u32,
        detail: Box<str>,
    },
}

impl<D: RecordBytes> BlockImage<D> {
    /// The page this image stands for.
    pub fn restore(&self) -> Result<Box<[u8; BLCKSZ]>, ImageError> {
        let mut page = Box::new([0u8; BLCKSZ]);
        self.restore_into(&mut page)?;
        Ok(page)
    }

    /// Writes the page this image stands for into `page` (all of it). On error `page`
    /// holds garbage.
    pub fn restore_into(&self, page: &mut [u8; BLCKSZ]) -> Result<(), ImageError> {
        let hole_offset = usize::from(self.hole_offset);
        let hole_length = usize::from(self.hole_length);
        if hole_offset + hole_length > BLCKSZ {
            return Err(ImageError::HoleOutOfPage {
                hole_offset: self.hole_offset,
                hole_length: self.hole_length,
            });
        }
        // The page without its hole is decompressed (or copied) to the start of `page`,
        // then the part after the hole is moved into place: no scratch page needed.
        let raw_len = BLCKSZ - hole_length;
        let raw = &mut page[..raw_len];
        let stored = &self.stored[..];
        // Both lengths are at most BLCKSZ or a u16 bimg_len in practice.
        let stored_len = u32::try_from(stored.len()).unwrap_or(u32::MAX);
        let expected = raw_len as u32;
        let decompress_error = |method, detail: String| ImageError::Decompress {
            method,
            stored: stored_len,
            expected,
            detail: detail.into(),
        };
        match self.compression {
            ImageCompression::None => {
                if stored.len() != raw_len {
                    return Err(ImageError::UncompressedLength {
                        stored: stored_len,
                        hole_length: self.hole_length,
                    });
                }
                raw.copy_from_slice(stored);
            }
            ImageCompression::Pglz => {
                pglz_decompress(stored, raw).map_err(|source| ImageError::Pglz {
                    stored: stored_len,
                    expected,
                    source,
                })?;
            }
            ImageCompression::Lz4 => {
                // LZ4_decompress_safe: a raw LZ4 block, no frame or size prefix.
                let produced = lz4_flex::block::decompress_into(stored, raw)
                    .map_err(|error| decompress_error("LZ4", error.to_string()))?;
                if produced != raw_len {
                    return Err(decompress_error(
                        "LZ4",
                        format!("produced {produced} bytes"),
                    ));
                }
            }
            ImageCompression::Zstd => {
                let produced = zstd_decompress(stored, raw)
                    .map_err(|error| decompress_error("zstd", error.to_string()))?;
                if produced != raw_len {
                    return Err(decompress_error(
                        "zstd",
                        format!("produced {produced} bytes"),
                    ));
                }
            }
        }
        if hole_length > 0 {
            page.copy_within(hole_offset..raw_len, hole_offset + hole_length);
            page[hole_offset..hole_offset + hole_length].fill(0);
        }
        Ok(())
    }
}

/// ZSTD_decompress into `dest`, with one decompression context per thread (creating a
/// context per 8 KiB image would cost more than the decompression).
fn zstd_decompress(source: &[u8], dest: &mut [u8]) -> std::io::Result<usize> {
    thread_local! {
        static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(decompressor) => decompressor,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        decompressor.decompress_to_buffer(source, dest)
    })
}
