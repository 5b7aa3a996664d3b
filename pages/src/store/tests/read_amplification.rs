//! The bounds compaction keeps: after each compaction, a read at the durable LSN returns
//! at most `image_threshold_deltas` deltas and consults at most
//! `max_layers_above_dense_image + 1` layers, however long the history; without
//! compaction both grow with it.

use tarn_wal::Lsn;
use tarn_wal::decode::ForkNumber;

use super::{Model, REL_A, TempDir, TestRng, check_store, checking_materializer};
use crate::store::{CompactionReport, Key, ReadMetrics, StoreConfig, TimelineStore, Value};

pub(super) const PAGE_BYTES: usize = 8192;
const START_LSN: Lsn = Lsn(0x1000);
const BLOCKS: u32 = 128;
const ROUNDS: usize = 32;
const DELTAS_PER_ROUND: usize = 300;

pub(super) fn workload_config() -> StoreConfig {
    StoreConfig {
        target_block_bytes: 16 * 1024,
        target_layer_bytes: 256 * 1024,
        l0_compaction_threshold: 4,
        image_threshold_deltas: 8,
        max_layers_above_dense_image: 6,
    }
}

/// A relation of `blocks` pages written with full images, then `rounds` rounds of
/// `deltas_per_round` small deltas (a quarter of them on 1/16 of the pages), each round
/// frozen and flushed and, if `compact`, followed by a compaction.
pub(super) struct Workload {
    pub store: TimelineStore,
    pub model: Model,
    pub keys: Vec<Key>,
    pub lsn: Lsn,
}

impl Workload {
    pub fn new(dir: &std::path::Path, config: StoreConfig, blocks: u32, seed: u64) -> Workload {
        let mut store = TimelineStore::create(dir, START_LSN, config).expect("create");
        let mut model = Model::default();
        let keys: Vec<Key> = (0..blocks)
            .map(|b| Key::rel_block(REL_A, ForkNumber::Main, b))
            .collect();
        let mut lsn = START_LSN;
        let mut rng = TestRng::new(seed);
        for &key in &keys {
            lsn = Lsn(lsn.0 + 8);
            let image = Value::Image(rng.bytes(PAGE_BYTES));
            store.put(key, lsn, image.clone()).expect("put");
            model.put(key, lsn, image);
        }
        store.freeze(lsn).expect("freeze");
        store.flush().expect("flush");
        Workload {
            store,
            model,
            keys,
            lsn,
        }
    }

    /// One round; returns what compaction did.
    pub fn round(&mut self, rng: &mut TestRng, deltas: usize, compact: bool) -> CompactionReport {
        let hot = (self.keys.len() / 16).max(1) as u64;
        for _ in 0..deltas {
            self.lsn = Lsn(self.lsn.0 + 8);
            let index = if rng.chance(25) {
                rng.below(hot)
            } else {
                rng.below(self.keys.len() as u64)
            };
            let key = self.keys[index as usize];
            let len = 60 + rng.below(100) as usize;
            let value = Value::Delta {
                will_init: false,
                record: rng.bytes(len),
            };
            self.store.put(key, self.lsn, value.clone()).expect("put");
            self.model.put(key, self.lsn, value);
        }
        self.store.freeze(self.lsn).expect("freeze");
        self.store.flush().expect("flush");
        if !compact {
            return CompactionReport::default();
        }
        let mut made = Vec::new();
        let report = self
            .store
            .compact(&mut checking_materializer(&self.model, &mut made))
            .expect("compact");
        self.model
            .images
            .extend(made.into_iter().map(|(k, l, i)| ((k, l), i)));
        report
    }

    /// Reads every key at the durable LSN; returns the metrics of those reads.
    pub fn read_all(&self) -> ReadMetrics {
        self.store.reset_metrics();
        for &key in &self.keys {
            self.store.get(key, self.store.durable_lsn()).expect("get");
        }
        self.store.metrics()
    }
}

#[test]
fn compaction_bounds_deltas_and_layers_per_read() {
    let config = workload_config();
    let dir = TempDir::new("readamp");
    let mut workload = Workload::new(dir.path(), config.clone(), BLOCKS, 1);
    let mut rng = TestRng::new(2);
    let mut total = CompactionReport::default();
    for round in 0..ROUNDS {
        let report = workload.round(&mut rng, DELTAS_PER_ROUND, true);
        total.l0_layers_merged += report.l0_layers_merged;
        total.dense_image_layers_written += report.dense_image_layers_written;
        total.sparse_image_layers_written += report.sparse_image_layers_written;
        if report.l0_layers_merged > 0 {
            let metrics = workload.read_all();
            assert!(
                metrics.max_deltas_returned <= config.image_threshold_deltas,
                "round {round}: {metrics:?}"
            );
            assert!(
                metrics.max_layers_visited as usize <= config.max_layers_above_dense_image + 1,
                "round {round}: {metrics:?}"
            );
        }
    }
    // Both kinds of image layer were needed to keep the bounds.
    assert_eq!(total.l0_layers_merged, ROUNDS);
    assert!(
        total.dense_image_layers_written > 0 && total.sparse_image_layers_written > 0,
        "{total:?}"
    );
    let lsns: Vec<Lsn> = (0..8)
        .map(|i| Lsn(START_LSN.0 + i * (workload.lsn.0 - START_LSN.0) / 7))
        .collect();
    check_store(
        &workload.store,
        &workload.model,
        &workload.keys,
        &lsns,
        "compacted",
    );

    let dir = TempDir::new("readamp-none");
    let mut uncompacted = Workload::new(dir.path(), config.clone(), BLOCKS, 1);
    let mut rng = TestRng::new(2);
    for _ in 0..ROUNDS {
        uncompacted.round(&mut rng, DELTAS_PER_ROUND, false);
    }
    let metrics = uncompacted.read_all();
    assert!(
        metrics.max_deltas_returned > 4 * config.image_threshold_deltas,
        "{metrics:?}"
    );
    assert!(metrics.max_layers_visited as usize > ROUNDS, "{metrics:?}");
}
