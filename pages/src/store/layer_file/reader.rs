//! Reading layer files: the footer and index once at open, blocks on demand, each
//! validated (checksum, archive structure, format invariants) before use.

use std::fs::File;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::{Portable, rancor};
use tarn_wal::Lsn;

use super::{
    ArchivedBlockRecord, ArchivedIndexRecord, FOOTER_BYTES, KeyInfo, LayerSummary, check_block,
    check_index, key_info, parse_footer,
};
use crate::store::Result;
use crate::store::durable::{self, corrupt, io_error};
use crate::store::key::Key;
use crate::store::value::Value;

/// Bytes that hold a valid archive of `A`, validated once when made.
struct Checked<A> {
    bytes: Bytes,
    archived: PhantomData<fn() -> A>,
}

impl<A> Checked<A>
where
    A: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    fn new(bytes: Bytes) -> std::result::Result<Self, rancor::Error> {
        rkyv::access::<A, rancor::Error>(&bytes)?;
        Ok(Checked {
            bytes,
            archived: PhantomData,
        })
    }

    fn get(&self) -> &A {
        // SAFETY: `new` validated exactly these bytes as an archived `A` (bytecheck), and
        // `Bytes` is immutable, so they still are one. The `unaligned` archive format
        // gives every archived type alignment 1, so the buffer's address is suitable.
        unsafe { rkyv::access_unchecked::<A>(&self.bytes) }
    }
}

/// One validated block of a layer file.
struct Block {
    archive: Checked<ArchivedBlockRecord>,
}

impl Block {
    pub fn len(&self) -> usize {
        self.archive.get().entries.len()
    }

    pub fn key_lsn(&self, i: usize) -> (Key, Lsn) {
        let entry = &self.archive.get().entries[i];
        (Key::from_bytes(entry.key), Lsn(entry.lsn.to_native()))
    }

    /// Entry `i`; its payload shares the block's buffer.
    pub fn entry(&self, i: usize) -> (Key, Lsn, Value) {
        let entry = &self.archive.get().entries[i];
        let payload = self.archive.bytes.slice_ref(entry.payload.as_slice());
        let value = Value::from_code(entry.kind, payload).unwrap_or_else(|| {
            unreachable!(
                "block validation admits only known kinds, found {}",
                entry.kind
            )
        });
        (
            Key::from_bytes(entry.key),
            Lsn(entry.lsn.to_native()),
            value,
        )
    }

    /// The number of entries ordered before or at `(key, lsn)`.
    fn partition_point(&self, key: Key, lsn: Lsn) -> usize {
        let target = (key.to_bytes(), lsn.0);
        self.archive
            .get()
            .entries
            .as_slice()
            .partition_point(|e| (e.key, e.lsn.to_native()) <= target)
    }
}

/// An open, validated layer file.
pub(crate) struct LayerFile {
    path: PathBuf,
    file: File,
    summary: LayerSummary,
    index: Checked<ArchivedIndexRecord>,
}

impl LayerFile {
    /// Opens a layer file and validates its footer and index (not its blocks: they are
    /// validated whenever read).
    pub fn open(path: &Path) -> Result<LayerFile> {
        let file = File::open(path).map_err(io_error("open", path))?;
        let file_len = file.metadata().map_err(io_error("stat", path))?.len();
        if file_len < FOOTER_BYTES as u64 {
            return Err(corrupt(
                path,
                0,
                format!("{file_len} bytes is too short for a layer file"),
            ));
        }
        let footer_offset = file_len - FOOTER_BYTES as u64;
        let footer = durable::read_exact_at(&file, path, footer_offset, FOOTER_BYTES)?;
        let (index_offset, index_len, index_crc) = parse_footer(&footer, file_len)
            .map_err(|detail| corrupt(path, footer_offset, detail))?;
        let index_bytes = durable::read_exact_at(&file, path, index_offset, index_len)?;
        let computed = crc32c::crc32c(&index_bytes);
        if computed != index_crc {
            return Err(corrupt(
                path,
                index_offset,
                format!(
                    "index checksum mismatch: footer says {index_crc:08x}, computed {computed:08x}"
                ),
            ));
        }
        let index = Checked::<ArchivedIndexRecord>::new(Bytes::from(index_bytes))
            .map_err(|e| corrupt(path, index_offset, format!("index archive invalid: {e}")))?;
        let summary = check_index(index.get(), index_offset)
            .map_err(|detail| corrupt(path, index_offset, detail))?;
        Ok(LayerFile {
            path: path.to_path_buf(),
            file,
            summary,
            index,
        })
    }

    pub fn summary(&self) -> &LayerSummary {
        &self.summary
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn block_count(&self) -> u32 {
        self.index.get().blocks.len() as u32
    }

    /// Bytes of the whole file.
    pub fn file_bytes(&self) -> u64 {
        let blocks = &self.index.get().blocks;
        let data_end = blocks
            .last()
            .map_or(0, |b| b.offset.to_native() + u64::from(b.len.to_native()));
        data_end + self.index.bytes.len() as u64 + FOOTER_BYTES as u64
    }

    /// The key's directory entry, if the layer has versions of it.
    pub fn key_info(&self, key: Key) -> Option<KeyInfo> {
        let keys = self.index.get().keys.as_slice();
        let target = key.to_bytes();
        keys.binary_search_by(|k| k.key.cmp(&target))
            .ok()
            .map(|i| key_info(&keys[i]))
    }

    /// Directory entries of the keys in `range`, ascending.
    pub fn keys_in<'a>(&'a self, range: &Range<Key>) -> impl Iterator<Item = KeyInfo> + use<'a> {
        let keys = self.index.get().keys.as_slice();
        let (start, end) = (range.start.to_bytes(), range.end.to_bytes());
        let from = keys.partition_point(|k| k.key < start);
        let to = keys.partition_point(|k| k.key < end);
        keys[from..to.max(from)].iter().map(key_info)
    }

    /// Reads and validates block `n`.
    fn read_block(&self, n: u32) -> Result<Block> {
        let block_ref = &self.index.get().blocks[n as usize];
        let offset = block_ref.offset.to_native();
        let bytes = durable::read_exact_at(
            &self.file,
            &self.path,
            offset,
            block_ref.len.to_native() as usize,
        )?;
        let computed = crc32c::crc32c(&bytes);
        let stored = block_ref.crc.to_native();
        if computed != stored {
            return Err(corrupt(
                &self.path,
                offset,
                format!(
                    "block {n} checksum mismatch: index says {stored:08x}, computed {computed:08x}"
                ),
            ));
        }
        let archive = Checked::<ArchivedBlockRecord>::new(Bytes::from(bytes)).map_err(|e| {
            corrupt(
                &self.path,
                offset,
                format!("block {n} archive invalid: {e}"),
            )
        })?;
        check_block(&self.summary, block_ref, archive.get())
            .map_err(|detail| corrupt(&self.path, offset, format!("block {n}: {detail}")))?;
        Ok(Block { archive })
    }

    /// Pushes the versions of `key` with LSN in `lo..=hi` onto `out`, newest first,
    /// stopping after the first image or will_init delta; returns whether it stopped at
    /// one. Reads only the blocks holding those versions (counted in `blocks_read`).
    pub fn collect(
        &self,
        key: Key,
        lo: Lsn,
        hi: Lsn,
        out: &mut Vec<(Lsn, Value)>,
        blocks_read: &mut u32,
    ) -> Result<bool> {
        let Some(info) = self.key_info(key) else {
            return Ok(false);
        };
        if info.min_lsn > hi || info.max_lsn < lo {
            return Ok(false);
        }
        // The newest block that can hold (key, hi): the last of the key's blocks whose
        // first entry is at or before it.
        let blocks = &self.index.get().blocks.as_slice()
            [info.first_block as usize..=info.last_block as usize];
        let target = (key.to_bytes(), hi.0);
        let newer = blocks.partition_point(|b| (b.first_key, b.first_lsn.to_native()) <= target);
        if newer == 0 {
            return Err(corrupt(
                &self.path,
                0,
                format!("key directory of {key} points at blocks that start after it"),
            ));
        }
        let mut block_no = info.first_block + newer as u32 - 1;
        loop {
            let block = self.read_block(block_no)?;
            *blocks_read += 1;
            let mut i = block.partition_point(key, hi);
            while i > 0 {
                i -= 1;
                let (entry_key, lsn) = block.key_lsn(i);
                if entry_key != key || lsn < lo {
                    return Ok(false);
                }
                let (_, _, value) = block.entry(i);
                let init = value.will_init();
                out.push((lsn, value));
                if init {
                    return Ok(true);
                }
            }
            if block_no == info.first_block {
                return Ok(false);
            }
            block_no -= 1;
        }
    }

    /// A cursor over every entry, in `(key, lsn)` order.
    pub fn cursor(&self) -> EntryCursor<'_> {
        EntryCursor {
            layer: self,
            next_block: 0,
            block: None,
            pos: 0,
        }
    }

    /// Reads and validates every block (a scrub).
    pub fn verify(&self) -> Result<()> {
        for n in 0..self.block_count() {
            self.read_block(n)?;
        }
        Ok(())
    }
}

/// Sequential reader of a layer's entries, one block in memory at a time.
pub(crate) struct EntryCursor<'a> {
    layer: &'a LayerFile,
    next_block: u32,
    block: Option<Block>,
    pos: usize,
}

impl EntryCursor<'_> {
    pub fn next_entry(&mut self) -> Result<Option<(Key, Lsn, Value)>> {
        loop {
            if let Some(block) = &self.block
                && self.pos < block.len()
            {
                self.pos += 1;
                return Ok(Some(block.entry(self.pos - 1)));
            }
            if self.next_block == self.layer.block_count() {
                self.block = None;
                return Ok(None);
            }
            self.block = Some(self.layer.read_block(self.next_block)?);
            self.next_block += 1;
            self.pos = 0;
        }
    }
}
