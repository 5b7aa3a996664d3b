//! Writing layer files: entries in, blocks out, then index and footer; the file is
//! durable under its final name when the writer finishes.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rkyv::rancor;
use tarn_wal::Lsn;

use super::reader::LayerFile;
use super::{
    BlockRecord, BlockRef, ENTRY_OVERHEAD_BYTES, EntryRecord, IndexRecord, KeyRef, LayerSummary,
    WRITE_BUFFER_BYTES, encode_footer,
};
use crate::store::Result;
use crate::store::durable::{self, io_error};
use crate::store::key::Key;
use crate::store::value::Value;

/// Writes a layer file: entries pushed in strictly increasing `(key, lsn)` order are cut
/// into blocks; [`LayerWriter::finish`] appends index and footer, makes the file durable
/// under its final name and opens it through the reader. Dropped unfinished, it removes
/// its temporary file.
pub(crate) struct LayerWriter {
    temp_path: PathBuf,
    out: Option<BufWriter<File>>,
    target_block_bytes: usize,
    offset: u64,
    pending: Vec<EntryRecord>,
    pending_bytes: usize,
    blocks: Vec<BlockRef>,
    keys: Vec<KeyRef>,
    last: Option<(Key, Lsn)>,
}

impl LayerWriter {
    pub fn create(temp_path: PathBuf, target_block_bytes: usize) -> Result<LayerWriter> {
        assert!(target_block_bytes > 0);
        let file = durable::create_file(&temp_path)?;
        Ok(LayerWriter {
            temp_path,
            out: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            target_block_bytes,
            offset: 0,
            pending: Vec::new(),
            pending_bytes: 0,
            blocks: Vec::new(),
            keys: Vec::new(),
            last: None,
        })
    }

    /// Bytes written so far, counting the block being built.
    pub fn bytes(&self) -> u64 {
        self.offset + self.pending_bytes as u64
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_none()
    }

    /// The key of the last entry pushed.
    pub fn last_key(&self) -> Option<Key> {
        self.last.map(|(key, _)| key)
    }

    pub fn push(&mut self, key: Key, lsn: Lsn, value: &Value) -> Result<()> {
        assert!(
            self.last.is_none_or(|last| last < (key, lsn)),
            "layer entries out of order: {key} at {lsn} after {:?}",
            self.last
        );
        let entry_bytes = ENTRY_OVERHEAD_BYTES + value.payload().len();
        if !self.pending.is_empty() && self.pending_bytes + entry_bytes > self.target_block_bytes {
            self.write_block()?;
        }
        let block = self.blocks.len() as u32;
        let init = value.will_init();
        let is_delta = u32::from(!value.is_image());
        match self.keys.last_mut() {
            Some(k) if k.key == key.to_bytes() => {
                k.last_block = block;
                k.entries += 1;
                k.max_lsn = lsn.0;
                if init {
                    (k.has_init, k.init_lsn, k.deltas_to_init) = (true, lsn.0, is_delta);
                } else {
                    k.deltas_to_init += 1;
                }
            }
            _ => self.keys.push(KeyRef {
                key: key.to_bytes(),
                first_block: block,
                last_block: block,
                entries: 1,
                min_lsn: lsn.0,
                max_lsn: lsn.0,
                has_init: init,
                init_lsn: if init { lsn.0 } else { 0 },
                deltas_to_init: is_delta,
            }),
        }
        self.pending.push(EntryRecord {
            key: key.to_bytes(),
            lsn: lsn.0,
            kind: value.kind_code(),
            payload: value.payload().to_vec(),
        });
        self.pending_bytes += entry_bytes;
        self.last = Some((key, lsn));
        Ok(())
    }

    fn write_block(&mut self) -> Result<()> {
        let entries = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let (first_key, first_lsn) = (entries[0].key, entries[0].lsn);
        let count = entries.len() as u32;
        let bytes = rkyv::to_bytes::<rancor::Error>(&BlockRecord { entries })
            .map_err(|e| io_error("serialize block", &self.temp_path)(std::io::Error::other(e)))?;
        let len = u32::try_from(bytes.len()).map_err(|_| {
            io_error("write", &self.temp_path)(std::io::Error::other(format!(
                "block of {} bytes",
                bytes.len()
            )))
        })?;
        self.write_all(&bytes)?;
        self.blocks.push(BlockRef {
            offset: self.offset,
            len,
            crc: crc32c::crc32c(&bytes),
            entries: count,
            first_key,
            first_lsn,
        });
        self.offset += u64::from(len);
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("writer is open until finished");
        out.write_all(bytes)
            .map_err(io_error("write", &self.temp_path))
    }

    /// Finishes the file as the layer `summary` in `dir`, which must cover every entry
    /// pushed, and returns it opened for reading. The rename into `dir` is durable after
    /// the caller's [`durable::sync_dir`].
    pub fn finish(mut self, summary: LayerSummary, dir: &Path) -> Result<LayerFile> {
        assert!(!self.is_empty(), "an empty layer file is never written");
        assert!(summary.check().is_ok(), "bad layer summary {summary:?}");
        for k in &self.keys {
            let key = Key::from_bytes(k.key);
            assert!(
                summary.key_range.contains(&key)
                    && summary.lsn_range.contains(&Lsn(k.min_lsn))
                    && summary.lsn_range.contains(&Lsn(k.max_lsn)),
                "entries of {key} outside the layer {summary:?}"
            );
            assert!(!summary.kind.is_image() || k.entries == 1 && k.has_init);
        }
        if !self.pending.is_empty() {
            self.write_block()?;
        }
        let index = IndexRecord {
            kind: summary.kind.code(),
            level: summary.level,
            key_start: summary.key_range.start.to_bytes(),
            key_end: summary.key_range.end.to_bytes(),
            lsn_start: summary.lsn_range.start.0,
            lsn_end: summary.lsn_range.end.0,
            blocks: std::mem::take(&mut self.blocks),
            keys: std::mem::take(&mut self.keys),
        };
        let bytes = rkyv::to_bytes::<rancor::Error>(&index)
            .map_err(|e| io_error("serialize index", &self.temp_path)(std::io::Error::other(e)))?;
        let index_len = u32::try_from(bytes.len()).map_err(|_| {
            io_error("write", &self.temp_path)(std::io::Error::other(format!(
                "index of {} bytes",
                bytes.len()
            )))
        })?;
        self.write_all(&bytes)?;
        let footer = encode_footer(self.offset, index_len, crc32c::crc32c(&bytes));
        self.write_all(&footer)?;
        let out = self.out.take().expect("writer is open until finished");
        let file = out
            .into_inner()
            .map_err(|e| io_error("write", &self.temp_path)(e.into_error()))?;
        let final_path = dir.join(summary.file_name());
        durable::commit_file(file, &self.temp_path, &final_path)?;
        let layer = LayerFile::open(&final_path)?;
        assert_eq!(
            layer.summary(),
            &summary,
            "layer {} reads back differently",
            final_path.display()
        );
        Ok(layer)
    }
}

impl Drop for LayerWriter {
    fn drop(&mut self) {
        if self.out.is_some() {
            // Unfinished (an error or a panic on the way): the temporary file is garbage.
            let _ = std::fs::remove_file(&self.temp_path);
        }
    }
}
