//! Tests of the page store, all deterministic (seeded) in temporary directories:
//! - `model_based`: random puts, freezes, flushes, compactions and crashes, checked
//!   after every step against a `BTreeMap` model;
//! - `corruption`: flipped bytes in layer and metadata files are errors naming the file
//!   and offset, never panics or wrong answers;
//! - `crash`: what survives a crash before, during and after flushes and compactions;
//! - `read_amplification`: the bounds compaction promises;
//! - `latency`: a measurement (ignored; run with `--ignored --nocapture` in release).

mod branch;
mod corruption;
mod crash;
mod latency;
mod model_based;
mod read_amplification;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode};

use super::{Key, MaterializeError, ReconstructData, SlruKind, StoreConfig, TimelineStore, Value};

/// A directory under the system temp dir, removed on drop.
pub(super) struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tarn-store-test-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: deterministic test randomness, so a failing seed reproduces.
pub(super) struct TestRng(u64);

impl TestRng {
    pub fn new(seed: u64) -> TestRng {
        TestRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn bytes(&mut self, len: usize) -> Bytes {
        (0..len)
            .map(|_| self.next_u64() as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    /// A random value: mostly plain deltas, some images and initialising deltas.
    pub fn value(&mut self) -> Value {
        let len = 4 + self.below(40) as usize;
        match self.below(100) {
            0..10 => Value::Image(self.bytes(len)),
            10..15 => Value::Delta {
                will_init: true,
                record: self.bytes(len),
            },
            _ => Value::Delta {
                will_init: false,
                record: self.bytes(len),
            },
        }
    }
}

/// A stand-in for redo: an image unchanged when there is nothing to replay, else a
/// hash of the base image and every delta (order- and LSN-sensitive).
pub(super) fn fake_redo(data: &ReconstructData) -> Bytes {
    if data.deltas.is_empty()
        && let Some((_, image)) = &data.image
    {
        return image.clone();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    match &data.image {
        Some((lsn, image)) => {
            feed(&lsn.0.to_le_bytes());
            feed(image);
        }
        None => feed(b"no image"),
    }
    for (lsn, delta) in &data.deltas {
        feed(&lsn.0.to_le_bytes());
        feed(&[u8::from(delta.will_init())]);
        feed(delta.payload());
    }
    let mut page = b"redo".to_vec();
    page.extend_from_slice(&hash.to_le_bytes());
    page.into()
}

/// A materializer that checks what the store hands it against the model, replays it
/// with [`fake_redo`] and records the image, for the model to learn once the compaction
/// commits.
pub(super) fn checking_materializer<'a>(
    model: &'a Model,
    made: &'a mut Vec<(Key, Lsn, Bytes)>,
) -> impl FnMut(Key, Lsn, ReconstructData) -> Result<Bytes, MaterializeError> + 'a {
    move |key, lsn, data| {
        assert_eq!(
            data,
            model.expected(key, lsn),
            "compaction read of {key:?} at {lsn}"
        );
        let image = fake_redo(&data);
        made.push((key, lsn, image.clone()));
        Ok(image)
    }
}

/// Small sizes so that a few hundred values make many blocks, layers and partitions.
pub(super) fn small_config() -> StoreConfig {
    StoreConfig {
        target_block_bytes: 256,
        target_layer_bytes: 2048,
        l0_compaction_threshold: 3,
        image_threshold_deltas: 3,
        max_layers_above_dense_image: 4,
    }
}

pub(super) const REL_A: RelFileNode = RelFileNode {
    spc_node: 1663,
    db_node: 5,
    rel_node: 16384,
};
pub(super) const REL_B: RelFileNode = RelFileNode {
    spc_node: 1663,
    db_node: 5,
    rel_node: 16390,
};

/// Keys from every part of the keyspace, ascending.
pub(super) fn key_pool() -> Vec<Key> {
    let mut keys = vec![
        Key::db_dir(),
        Key::rel_dir(1663, 5),
        Key::relmap_file(1663, 5),
        Key::rel_size(REL_A, ForkNumber::Main),
        Key::rel_block(REL_A, ForkNumber::Fsm, 0),
        Key::rel_block(REL_A, ForkNumber::VisibilityMap, 0),
        Key::rel_size(REL_B, ForkNumber::Main),
        Key::slru_dir(SlruKind::Clog),
        Key::slru_page(SlruKind::Clog, 0, 0),
        Key::slru_page(SlruKind::Clog, 0, 1),
        Key::slru_page(SlruKind::MultiXactOffsets, 0, 0),
        Key::checkpoint(),
        Key::control_file(),
    ];
    keys.extend((0..8).map(|blk| Key::rel_block(REL_A, ForkNumber::Main, blk)));
    keys.extend((0..4).map(|blk| Key::rel_block(REL_B, ForkNumber::Main, blk)));
    keys.sort();
    keys
}

/// What the store must return: every write, and the images compaction made.
#[derive(Clone, Default)]
pub(super) struct Model {
    pub writes: BTreeMap<(Key, Lsn), Value>,
    pub images: BTreeMap<(Key, Lsn), Bytes>,
}

impl Model {
    pub fn put(&mut self, key: Key, lsn: Lsn, value: Value) {
        assert!(self.writes.insert((key, lsn), value).is_none());
    }

    /// The newest image (written or made) at or below `lsn` and the deltas above it; a
    /// made image at an LSN includes a write at the same LSN.
    pub fn expected(&self, key: Key, lsn: Lsn) -> ReconstructData {
        let writes: Vec<(Lsn, &Value)> = self
            .writes
            .range((key, Lsn(0))..=(key, lsn))
            .map(|((_, l), v)| (*l, v))
            .collect();
        let made = self.images.range((key, Lsn(0))..=(key, lsn)).next_back();
        let init = writes.iter().rposition(|(_, v)| v.will_init());
        let deltas_from = |from: usize| {
            writes[from..]
                .iter()
                .map(|(l, v)| (*l, (*v).clone()))
                .collect()
        };
        if let Some(((_, made_lsn), image)) = made
            && init.is_none_or(|i| *made_lsn >= writes[i].0)
        {
            let from = writes.partition_point(|(l, _)| l <= made_lsn);
            return ReconstructData {
                image: Some((*made_lsn, image.clone())),
                deltas: deltas_from(from),
            };
        }
        match init {
            Some(i) => match writes[i].1 {
                Value::Image(image) => ReconstructData {
                    image: Some((writes[i].0, image.clone())),
                    deltas: deltas_from(i + 1),
                },
                Value::Delta { .. } => ReconstructData {
                    image: None,
                    deltas: deltas_from(i),
                },
            },
            None => ReconstructData {
                image: None,
                deltas: deltas_from(0),
            },
        }
    }

    pub fn keys_at(&self, range: &Range<Key>, lsn: Lsn) -> Vec<Key> {
        let mut keys: Vec<Key> = self
            .writes
            .keys()
            .filter(|(k, l)| range.contains(k) && *l <= lsn)
            .map(|(k, _)| *k)
            .collect();
        keys.dedup();
        keys
    }

    pub fn latest_lsn_of(&self, key: Key) -> Option<Lsn> {
        self.writes
            .range((key, Lsn(0))..=(key, Lsn::MAX))
            .next_back()
            .map(|((_, l), _)| *l)
    }

    /// Writes above `lsn`, in LSN order (as WAL would deliver them again).
    pub fn writes_above(&self, lsn: Lsn) -> Vec<(Key, Lsn, Value)> {
        let mut above: Vec<(Key, Lsn, Value)> = self
            .writes
            .iter()
            .filter(|((_, l), _)| *l > lsn)
            .map(|((k, l), v)| (*k, *l, v.clone()))
            .collect();
        above.sort_by_key(|(k, l, _)| (*l, *k));
        above
    }

    /// The model as of a crash that kept everything at or below `lsn`.
    pub fn truncated(&self, lsn: Lsn) -> Model {
        Model {
            writes: self
                .writes
                .iter()
                .filter(|((_, l), _)| *l <= lsn)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            images: self
                .images
                .iter()
                .filter(|((_, l), _)| *l <= lsn)
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
        }
    }

    pub fn max_lsn(&self) -> Option<Lsn> {
        self.writes.keys().map(|(_, l)| *l).max()
    }
}

/// Checks `get` and `latest_lsn_of` of every key at every LSN of `lsns`.
pub(super) fn check_store(
    store: &TimelineStore,
    model: &Model,
    keys: &[Key],
    lsns: &[Lsn],
    context: &str,
) {
    for &key in keys {
        for &lsn in lsns {
            let got = store
                .get(key, lsn)
                .unwrap_or_else(|e| panic!("{context}: get {key:?} at {lsn}: {e}"));
            assert_eq!(
                got,
                model.expected(key, lsn),
                "{context}: get {key:?} at {lsn}"
            );
        }
        assert_eq!(
            store.latest_lsn_of(key),
            model.latest_lsn_of(key),
            "{context}: latest LSN of {key:?}"
        );
    }
}
