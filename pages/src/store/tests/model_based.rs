//! Random operations against the store and a `BTreeMap` model, checked after every
//! step: puts (several keys may share an LSN), freezes, flushes, compactions, crashes
//! (reopen without flushing, then re-ingest from the durable LSN), range reads.

use tarn_wal::Lsn;

use super::{Model, TempDir, TestRng, check_store, checking_materializer, key_pool};
use crate::store::{Key, StoreConfig, StoreError, TimelineStore};

const START_LSN: Lsn = Lsn(0x1000);
const STEPS: usize = 400;
const SEEDS: u64 = 4;
const FULL_CHECK_EVERY: usize = 8;

/// Runs seeds `1..=SEEDS`; `TARN_STORE_SEEDS=N` runs `1..=N`, `TARN_STORE_SEED=S`
/// replays seed `S` alone.
#[test]
fn store_matches_model_under_random_operations() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seeds = match (env("TARN_STORE_SEED"), env("TARN_STORE_SEEDS")) {
        (Some(seed), _) => seed..=seed,
        (None, Some(count)) => 1..=count,
        (None, None) => 1..=SEEDS,
    };
    for seed in seeds {
        run(seed);
    }
}

fn run(seed: u64) {
    let dir = TempDir::new("model");
    let mut rng = TestRng::new(seed);
    // Sizes and thresholds vary with the seed, around the small defaults.
    let config = StoreConfig {
        target_block_bytes: 128 + rng.below(384) as usize,
        target_layer_bytes: 1024 + rng.below(3072),
        l0_compaction_threshold: 2 + rng.below(3) as usize,
        image_threshold_deltas: 1 + rng.below(4) as u32,
        max_layers_above_dense_image: 2 + rng.below(4) as usize,
    };
    let mut store = TimelineStore::create(dir.path(), START_LSN, config.clone()).expect("create");
    let mut model = Model::default();
    let keys = key_pool();
    // The last LSN put (or frozen at), and the keys already put at it.
    let mut lsn = START_LSN;
    let mut keys_at_lsn: Vec<Key> = Vec::new();
    let mut must_advance = true;
    let mut durable = START_LSN;
    let mut merges = 0;

    for step in 0..STEPS {
        let context = format!("seed {seed} step {step}");
        match rng.below(100) {
            0..55 => {
                for _ in 0..1 + rng.below(4) {
                    let key = keys[rng.below(keys.len() as u64) as usize];
                    let same_lsn = !must_advance && rng.chance(30) && !keys_at_lsn.contains(&key);
                    if !same_lsn {
                        lsn = Lsn(lsn.0 + 1 + rng.below(24));
                        keys_at_lsn.clear();
                        must_advance = false;
                    }
                    let value = rng.value();
                    store.put(key, lsn, value.clone()).expect("put");
                    model.put(key, lsn, value);
                    keys_at_lsn.push(key);
                }
            }
            55..67 => {
                let up_to = Lsn(lsn.0 + rng.below(3) * 4);
                store.freeze(up_to).expect("freeze");
                lsn = up_to;
                must_advance = true;
                if rng.chance(50) {
                    durable = store.flush().expect("flush");
                    assert_eq!(durable, up_to, "{context}");
                }
            }
            67..77 => {
                durable = store.flush().expect("flush");
            }
            77..87 => {
                let mut made = Vec::new();
                let report = store
                    .compact(&mut checking_materializer(&model, &mut made))
                    .expect("compact");
                assert_eq!(report.images_written, made.len());
                model
                    .images
                    .extend(made.into_iter().map(|(k, l, i)| ((k, l), i)));
                if report.l0_layers_merged > 0 {
                    merges += 1;
                    check_bounds_after_merge(&store, &keys, durable, &context);
                }
            }
            87..92 => {
                // Crash: the in-memory layers are lost; ingest resumes above the durable LSN.
                drop(store);
                store = TimelineStore::open(dir.path(), config.clone()).expect("reopen");
                assert_eq!(store.durable_lsn(), durable, "{context}");
                let survived = model.truncated(durable);
                check_store(
                    &store,
                    &survived,
                    &keys,
                    &[Lsn::MAX],
                    &format!("{context} after crash"),
                );
                for (key, at, value) in model.writes_above(durable) {
                    store.put(key, at, value).expect("re-ingest");
                }
                lsn = model.max_lsn().unwrap_or(START_LSN).max(durable);
                must_advance = true;
            }
            _ => {
                let a = keys[rng.below(keys.len() as u64) as usize];
                let b = keys[rng.below(keys.len() as u64) as usize];
                let range = a.min(b)..a.max(b).next();
                let at = Lsn(START_LSN.0 + rng.below(lsn.0 - START_LSN.0 + 1));
                let got = store.get_range_at(&range, at).expect("range");
                let expected: Vec<_> = model
                    .keys_at(&range, at)
                    .into_iter()
                    .map(|key| (key, model.expected(key, at)))
                    .collect();
                assert_eq!(got, expected, "{context}: range {range:?} at {at}");
            }
        }
        // Every step: the newest LSN and a random one; every few steps, more.
        let mut lsns = vec![lsn, Lsn(START_LSN.0 + rng.below(lsn.0 - START_LSN.0 + 1))];
        if step % FULL_CHECK_EVERY == 0 {
            lsns.extend([START_LSN, durable, Lsn(lsn.0 + 100)]);
            lsns.extend((0..3).map(|_| Lsn(START_LSN.0 + rng.below(lsn.0 - START_LSN.0 + 1))));
        }
        check_store(&store, &model, &keys, &lsns, &context);
    }
    assert!(
        merges >= 3,
        "seed {seed}: only {merges} compactions merged layers"
    );

    // An empty (reversed) range holds nothing.
    assert!(
        store
            .get_range_at(&(keys[3]..keys[1]), lsn)
            .expect("range")
            .is_empty()
    );

    // Puts below what the store has are refused.
    let key = keys[0];
    let low = store.put(key, START_LSN, super::TestRng::new(0).value());
    assert!(matches!(low, Err(StoreError::OutOfOrder { .. })), "{low:?}");
}

/// Right after a merge of every L0 layer (and with nothing in memory at or below the
/// durable LSN), a read at the durable LSN returns at most `image_threshold_deltas`
/// deltas and consults at most `max_layers_above_dense_image + 1` layers.
fn check_bounds_after_merge(store: &TimelineStore, keys: &[Key], durable: Lsn, context: &str) {
    assert_eq!(store.l0_layer_count(), 0, "{context}");
    let config = store.config();
    for &key in keys {
        let (_, stats) = store.get_with_stats(key, durable).expect("get");
        assert!(
            stats.deltas <= config.image_threshold_deltas,
            "{context}: {key:?} returned {} deltas",
            stats.deltas
        );
        assert!(
            stats.layers_visited as usize <= config.max_layers_above_dense_image + 1,
            "{context}: {key:?} visited {} layers",
            stats.layers_visited
        );
    }
}
