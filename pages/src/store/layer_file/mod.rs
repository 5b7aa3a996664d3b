//! The on-disk format shared by delta and image layer files, written once and never
//! modified:
//!
//! ```text
//! [block 0][block 1]…[block n-1][index][footer]
//! ```
//!
//! - A **block** is an rkyv archive of `BlockRecord`: entries `(key, lsn, kind,
//!   payload)` sorted by `(key, lsn)`, about `target_block_bytes` of them (one entry
//!   alone may be larger). Reads access the archive in place (rkyv's `unaligned` format)
//!   and hand out payloads as slices of the block's buffer, without copying.
//! - The **index** is an rkyv archive of `IndexRecord`: the layer's summary (kind,
//!   level, key range, LSN range), the block table (offset, length, crc32c, entry count,
//!   first `(key, lsn)` of each block) and the key directory (per key: its blocks, entry
//!   count, LSN bounds and newest initialising version), so a read finds a key's entries
//!   — or their absence — without touching other blocks. It is read once when the layer
//!   is opened and accessed in place from then on.
//! - The **footer** (32 bytes, little-endian) locates the index: magic `TARNLAYR`,
//!   format version u32, index offset u64, index length u32, index crc32c u32, and the
//!   crc32c of the preceding 28 footer bytes.
//!
//! Every byte is covered by a crc32c: each block by its entry in the index, the index by
//! the footer, the footer by itself. Reads verify the checksum, then rkyv's structural
//! validation, then the format's invariants (ordering, ranges, counts); any failure is a
//! [`StoreError::Corrupt`] naming the file and the offset of the bad block, index or
//! footer. The writer checks the same invariants before writing (assertions: a violation
//! is a bug in the store, not bad input) and opens the finished file through the reader.

mod reader;
mod writer;

use std::ops::Range;

use rkyv::{Archive, Serialize};
use tarn_wal::Lsn;

use super::key::{KEY_BYTES, Key};
use super::value::{KIND_DELTA_WILL_INIT, KIND_IMAGE};

pub(crate) use reader::{EntryCursor, LayerFile};
pub(crate) use writer::LayerWriter;

const MAGIC: [u8; 8] = *b"TARNLAYR";
const FORMAT_VERSION: u32 = 1;
pub(crate) const FOOTER_BYTES: usize = 32;
/// Entry bytes in a block besides the payload: key, lsn, kind, and the archived vector
/// header (relative pointer and length).
const ENTRY_OVERHEAD_BYTES: usize = KEY_BYTES + 8 + 1 + 8;
/// Buffered writes: one syscall per this many bytes.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Archive, Serialize)]
struct EntryRecord {
    key: [u8; KEY_BYTES],
    lsn: u64,
    kind: u8,
    payload: Vec<u8>,
}

#[derive(Archive, Serialize)]
struct BlockRecord {
    entries: Vec<EntryRecord>,
}

#[derive(Archive, Serialize)]
struct BlockRef {
    offset: u64,
    len: u32,
    crc: u32,
    entries: u32,
    first_key: [u8; KEY_BYTES],
    first_lsn: u64,
}

#[derive(Archive, Serialize)]
struct KeyRef {
    key: [u8; KEY_BYTES],
    first_block: u32,
    last_block: u32,
    entries: u32,
    min_lsn: u64,
    max_lsn: u64,
    has_init: bool,
    /// LSN of the newest image or will_init delta (0 without one).
    init_lsn: u64,
    /// Deltas a read from the key's newest version down returns: those above the newest
    /// initialising version, plus that version if it is a will_init delta (all entries
    /// if there is none).
    deltas_to_init: u32,
}

#[derive(Archive, Serialize)]
struct IndexRecord {
    kind: u8,
    level: u8,
    key_start: [u8; KEY_BYTES],
    key_end: [u8; KEY_BYTES],
    lsn_start: u64,
    lsn_end: u64,
    blocks: Vec<BlockRef>,
    keys: Vec<KeyRef>,
}

/// The kinds of layer file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LayerKind {
    /// Every version of the keys in its key range with LSNs in its LSN range.
    Delta,
    /// Images at one LSN of some keys of its key range (per-key image pushdown).
    SparseImage,
    /// Images at one LSN of every key of its key range that has a version at or below
    /// that LSN: a key absent from it has none.
    DenseImage,
}

/// What a layer file holds: its kind, compaction level (0 for flushed delta layers) and
/// the key × LSN rectangle it covers (both ranges end-exclusive; an image layer at LSN
/// `L` covers `L..L+1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LayerSummary {
    pub kind: LayerKind,
    pub level: u8,
    pub key_range: Range<Key>,
    pub lsn_range: Range<Lsn>,
}

/// A key's entry in a layer's key directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyInfo {
    pub key: Key,
    pub first_block: u32,
    pub last_block: u32,
    pub entries: u32,
    pub min_lsn: Lsn,
    pub max_lsn: Lsn,
    /// The newest image or will_init delta in this layer.
    pub init_lsn: Option<Lsn>,
    /// See `KeyRef::deltas_to_init`.
    pub deltas_to_init: u32,
}

impl LayerKind {
    fn code(self) -> u8 {
        match self {
            LayerKind::Delta => 0,
            LayerKind::SparseImage => 1,
            LayerKind::DenseImage => 2,
        }
    }

    fn from_code(code: u8) -> Option<LayerKind> {
        match code {
            0 => Some(LayerKind::Delta),
            1 => Some(LayerKind::SparseImage),
            2 => Some(LayerKind::DenseImage),
            _ => None,
        }
    }

    pub fn is_image(self) -> bool {
        self != LayerKind::Delta
    }
}

impl LayerSummary {
    /// The file name, unique per layer: key range and LSN range (or LSN) in hex, and the
    /// kind as extension.
    pub fn file_name(&self) -> String {
        let (start, end) = (self.key_range.start, self.key_range.end);
        match self.kind {
            LayerKind::Delta => format!(
                "{start}-{end}__{:016X}-{:016X}.delta",
                self.lsn_range.start.0, self.lsn_range.end.0
            ),
            LayerKind::SparseImage => {
                format!("{start}-{end}__{:016X}.image", self.lsn_range.start.0)
            }
            LayerKind::DenseImage => {
                format!("{start}-{end}__{:016X}.dense", self.lsn_range.start.0)
            }
        }
    }

    /// Whether a file name has the shape of a layer file name (for garbage collection of
    /// files left by interrupted writes).
    pub fn looks_like_layer_file(name: &str) -> bool {
        [".delta", ".image", ".dense"]
            .iter()
            .any(|ext| name.ends_with(ext))
    }

    /// The LSN of an image layer.
    pub fn image_lsn(&self) -> Lsn {
        debug_assert!(self.kind.is_image());
        self.lsn_range.start
    }

    /// The highest LSN an entry of this layer can have.
    pub fn top_lsn(&self) -> Lsn {
        Lsn(self.lsn_range.end.0 - 1)
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.key_range.start >= self.key_range.end {
            return Err(format!(
                "empty key range {}..{}",
                self.key_range.start, self.key_range.end
            ));
        }
        if self.lsn_range.start >= self.lsn_range.end {
            return Err(format!(
                "empty LSN range {}..{}",
                self.lsn_range.start, self.lsn_range.end
            ));
        }
        if self.kind.is_image()
            && (self.lsn_range.end.0 != self.lsn_range.start.0 + 1 || self.level != 0)
        {
            return Err(format!(
                "image layer with LSN range {:?} and level {}",
                self.lsn_range, self.level
            ));
        }
        Ok(())
    }
}

fn key_info(k: &ArchivedKeyRef) -> KeyInfo {
    KeyInfo {
        key: Key::from_bytes(k.key),
        first_block: k.first_block.to_native(),
        last_block: k.last_block.to_native(),
        entries: k.entries.to_native(),
        min_lsn: Lsn(k.min_lsn.to_native()),
        max_lsn: Lsn(k.max_lsn.to_native()),
        init_lsn: k.has_init.then(|| Lsn(k.init_lsn.to_native())),
        deltas_to_init: k.deltas_to_init.to_native(),
    }
}

fn encode_footer(index_offset: u64, index_len: u32, index_crc: u32) -> [u8; FOOTER_BYTES] {
    let mut footer = [0u8; FOOTER_BYTES];
    footer[0..8].copy_from_slice(&MAGIC);
    footer[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    footer[12..20].copy_from_slice(&index_offset.to_le_bytes());
    footer[20..24].copy_from_slice(&index_len.to_le_bytes());
    footer[24..28].copy_from_slice(&index_crc.to_le_bytes());
    let crc = crc32c::crc32c(&footer[..28]);
    footer[28..32].copy_from_slice(&crc.to_le_bytes());
    footer
}

/// The index's offset, length and crc from a footer.
fn parse_footer(footer: &[u8], file_len: u64) -> std::result::Result<(u64, usize, u32), String> {
    let le32 = |at: usize| {
        u32::from_le_bytes([footer[at], footer[at + 1], footer[at + 2], footer[at + 3]])
    };
    let stored_crc = le32(28);
    let computed = crc32c::crc32c(&footer[..28]);
    if stored_crc != computed {
        return Err(format!(
            "footer checksum mismatch: stored {stored_crc:08x}, computed {computed:08x}"
        ));
    }
    if footer[0..8] != MAGIC {
        return Err("not a layer file (bad magic)".to_string());
    }
    let version = le32(8);
    if version != FORMAT_VERSION {
        return Err(format!(
            "layer format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&footer[12..20]);
    let index_offset = u64::from_le_bytes(offset);
    let index_len = le32(20);
    if index_offset.checked_add(u64::from(index_len)) != Some(file_len - FOOTER_BYTES as u64) {
        return Err(format!(
            "index at {index_offset} of {index_len} bytes does not end at the footer ({file_len} byte file)"
        ));
    }
    Ok((index_offset, index_len as usize, le32(24)))
}

/// Checks the index's invariants and returns its summary.
fn check_index(
    index: &ArchivedIndexRecord,
    index_offset: u64,
) -> std::result::Result<LayerSummary, String> {
    let kind = LayerKind::from_code(index.kind)
        .ok_or_else(|| format!("unknown layer kind {}", index.kind))?;
    let summary = LayerSummary {
        kind,
        level: index.level,
        key_range: Key::from_bytes(index.key_start)..Key::from_bytes(index.key_end),
        lsn_range: Lsn(index.lsn_start.to_native())..Lsn(index.lsn_end.to_native()),
    };
    summary.check()?;
    let mut expected_offset = 0u64;
    let mut previous_first: Option<([u8; KEY_BYTES], u64)> = None;
    let mut block_entries = 0u64;
    for (n, block) in index.blocks.iter().enumerate() {
        if block.offset.to_native() != expected_offset || block.entries.to_native() == 0 {
            return Err(format!(
                "block {n} at offset {} with {} entries",
                block.offset, block.entries
            ));
        }
        let first = (block.first_key, block.first_lsn.to_native());
        if previous_first.is_some_and(|p| p >= first) {
            return Err(format!("block {n} starts before the block preceding it"));
        }
        previous_first = Some(first);
        expected_offset += u64::from(block.len.to_native());
        block_entries += u64::from(block.entries.to_native());
    }
    if expected_offset != index_offset {
        return Err(format!(
            "blocks end at {expected_offset}, the index starts at {index_offset}"
        ));
    }
    let mut previous_key: Option<[u8; KEY_BYTES]> = None;
    let mut key_entries = 0u64;
    let block_count = index.blocks.len() as u32;
    for k in index.keys.iter() {
        let info = key_info(k);
        if previous_key.is_some_and(|p| p >= k.key) {
            return Err(format!("key directory out of order at {}", info.key));
        }
        previous_key = Some(k.key);
        let lsn_ok = summary.lsn_range.start <= info.min_lsn
            && info.min_lsn <= info.max_lsn
            && info.max_lsn < summary.lsn_range.end
            && info
                .init_lsn
                .is_none_or(|l| info.min_lsn <= l && l <= info.max_lsn);
        if !summary.key_range.contains(&info.key)
            || info.first_block > info.last_block
            || info.last_block >= block_count
            || info.entries == 0
            || info.deltas_to_init > info.entries
            || (info.init_lsn.is_none() && info.deltas_to_init != info.entries)
            || !lsn_ok
        {
            return Err(format!(
                "key directory entry {info:?} does not fit the layer {summary:?}"
            ));
        }
        key_entries += u64::from(info.entries);
    }
    if key_entries != block_entries {
        return Err(format!(
            "key directory counts {key_entries} entries, blocks {block_entries}"
        ));
    }
    Ok(summary)
}

/// Checks a block's entries against its block table entry and the layer's summary.
fn check_block(
    summary: &LayerSummary,
    block_ref: &ArchivedBlockRef,
    block: &ArchivedBlockRecord,
) -> std::result::Result<(), String> {
    let entries = block.entries.as_slice();
    if entries.len() != block_ref.entries.to_native() as usize {
        return Err(format!(
            "{} entries, the index says {}",
            entries.len(),
            block_ref.entries
        ));
    }
    let first = entries.first().map(|e| (e.key, e.lsn.to_native()));
    if first != Some((block_ref.first_key, block_ref.first_lsn.to_native())) {
        return Err("first entry differs from the index".to_string());
    }
    let key_start = summary.key_range.start.to_bytes();
    let key_end = summary.key_range.end.to_bytes();
    let mut previous: Option<([u8; KEY_BYTES], u64)> = None;
    for e in entries {
        let lsn = e.lsn.to_native();
        let current = (e.key, lsn);
        if previous.is_some_and(|p| p >= current) {
            return Err("entries out of order".to_string());
        }
        previous = Some(current);
        let kind_ok = if summary.kind.is_image() {
            e.kind == KIND_IMAGE
        } else {
            e.kind <= KIND_DELTA_WILL_INIT
        };
        if !kind_ok
            || e.key < key_start
            || e.key >= key_end
            || lsn < summary.lsn_range.start.0
            || lsn >= summary.lsn_range.end.0
        {
            return Err(format!(
                "entry {} at {} (kind {}) does not fit the layer",
                Key::from_bytes(e.key),
                Lsn(lsn),
                e.kind
            ));
        }
    }
    Ok(())
}
