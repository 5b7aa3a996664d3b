//! Crashes: before a flush (only the in-memory layers are lost, the durable LSN says
//! where to resume), in the middle of a flush or a compaction (files written but not
//! committed are removed on open), and after a compaction's commit but before it
//! removed the merged layers.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use tarn_wal::Lsn;

use super::{Model, TempDir, TestRng, check_store, checking_materializer, key_pool, small_config};
use crate::store::TimelineStore;

const START_LSN: Lsn = Lsn(0x1000);

/// Puts `count` random values above the model's last LSN.
fn ingest(store: &mut TimelineStore, model: &mut Model, rng: &mut TestRng, count: usize) -> Lsn {
    let keys = key_pool();
    let mut lsn = model.max_lsn().unwrap_or(START_LSN).max(store.last_lsn());
    for _ in 0..count {
        lsn = Lsn(lsn.0 + 8);
        let key = keys[rng.below(keys.len() as u64) as usize];
        let value = rng.value();
        store.put(key, lsn, value.clone()).expect("put");
        model.put(key, lsn, value);
    }
    lsn
}

/// The names of the files in `dir`.
fn files(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

fn copy_files<'a>(from: &Path, to: &Path, names: impl IntoIterator<Item = &'a String>) {
    fs::create_dir_all(to).expect("mkdir");
    for name in names {
        fs::copy(from.join(name), to.join(name)).expect("copy");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    copy_files(from, to, &files(from));
}

fn all_lsns(model: &Model) -> Vec<Lsn> {
    let mut lsns: Vec<Lsn> = model.writes.keys().map(|(_, l)| *l).step_by(7).collect();
    lsns.extend([START_LSN, Lsn::MAX]);
    lsns
}

#[test]
fn crash_before_flush_loses_only_memory() {
    let dir = TempDir::new("crash-memory");
    let mut store = TimelineStore::create(dir.path(), START_LSN, small_config()).expect("create");
    let mut model = Model::default();
    let mut rng = TestRng::new(11);
    let durable = ingest(&mut store, &mut model, &mut rng, 60);
    store.freeze(durable).expect("freeze");
    assert_eq!(store.flush().expect("flush"), durable);
    // Frozen but not flushed, then still open: both lost.
    let frozen = ingest(&mut store, &mut model, &mut rng, 30);
    store.freeze(frozen).expect("freeze");
    ingest(&mut store, &mut model, &mut rng, 30);
    drop(store);

    let mut store = TimelineStore::open(dir.path(), small_config()).expect("open");
    assert_eq!(store.durable_lsn(), durable);
    assert_eq!(store.last_lsn(), durable);
    let survived = model.truncated(durable);
    check_store(
        &store,
        &survived,
        &key_pool(),
        &all_lsns(&model),
        "after crash",
    );

    // Re-ingesting the WAL above the durable LSN restores everything.
    for (key, lsn, value) in model.writes_above(durable) {
        store.put(key, lsn, value).expect("re-ingest");
    }
    check_store(
        &store,
        &model,
        &key_pool(),
        &all_lsns(&model),
        "after re-ingest",
    );
}

#[test]
fn crash_inside_flush_leaves_nothing_visible() {
    let dir = TempDir::new("crash-flush");
    let mut store = TimelineStore::create(dir.path(), START_LSN, small_config()).expect("create");
    let mut model = Model::default();
    let mut rng = TestRng::new(12);
    let durable = ingest(&mut store, &mut model, &mut rng, 50);
    store.freeze(durable).expect("freeze");
    store.flush().expect("flush");
    let before = TempDir::new("crash-flush-before");
    copy_dir(dir.path(), before.path());

    let next = ingest(&mut store, &mut model, &mut rng, 50);
    store.freeze(next).expect("freeze");
    store.flush().expect("flush");
    // The crash: the new layer file was renamed into place, the metadata was not
    // replaced, and a temporary file was half written.
    let new_files: Vec<String> = files(dir.path())
        .difference(&files(before.path()))
        .cloned()
        .collect();
    assert_eq!(new_files.len(), 1, "{new_files:?}");
    copy_files(dir.path(), before.path(), &new_files);
    fs::write(before.path().join("layer-9.tmp"), b"half a layer").expect("temp");

    let store = TimelineStore::open(before.path(), small_config()).expect("open");
    assert_eq!(store.durable_lsn(), durable);
    check_store(
        &store,
        &model.truncated(durable),
        &key_pool(),
        &all_lsns(&model),
        "after crash in flush",
    );
    let left = files(before.path());
    assert!(!new_files.iter().any(|n| left.contains(n)), "{left:?}");
    assert!(!left.iter().any(|f| f.ends_with(".tmp")), "{left:?}");
}

#[test]
fn crash_around_compaction_commit() {
    let dir = TempDir::new("crash-compaction");
    let mut store = TimelineStore::create(dir.path(), START_LSN, small_config()).expect("create");
    let mut model = Model::default();
    let mut rng = TestRng::new(13);
    for _ in 0..3 {
        let lsn = ingest(&mut store, &mut model, &mut rng, 60);
        store.freeze(lsn).expect("freeze");
        store.flush().expect("flush");
    }
    let before = TempDir::new("crash-compaction-before");
    copy_dir(dir.path(), before.path());
    let before_model = model.clone();

    let mut made = Vec::new();
    let report = store
        .compact(&mut checking_materializer(&model, &mut made))
        .expect("compact");
    assert_eq!(report.l0_layers_merged, 3);
    model
        .images
        .extend(made.into_iter().map(|(k, l, i)| ((k, l), i)));
    let lsns = all_lsns(&model);

    // Crash before the metadata commit: the outputs are on disk but not listed.
    let crashed = TempDir::new("crash-compaction-uncommitted");
    copy_dir(before.path(), crashed.path());
    let outputs: Vec<String> = files(dir.path())
        .difference(&files(before.path()))
        .cloned()
        .collect();
    assert!(outputs.len() >= 2, "{outputs:?}");
    copy_files(dir.path(), crashed.path(), &outputs);
    let store_crashed = TimelineStore::open(crashed.path(), small_config()).expect("open");
    assert_eq!(store_crashed.l0_layer_count(), 3);
    check_store(
        &store_crashed,
        &before_model,
        &key_pool(),
        &lsns,
        "compaction not committed",
    );
    assert_eq!(files(crashed.path()), files(before.path()));

    // Crash after the commit, before the merged L0 files were removed.
    let committed = TempDir::new("crash-compaction-committed");
    copy_dir(dir.path(), committed.path());
    let merged: Vec<String> = files(before.path())
        .difference(&files(dir.path()))
        .cloned()
        .collect();
    assert_eq!(merged.len(), 3, "{merged:?}");
    copy_files(before.path(), committed.path(), &merged);
    let store_committed = TimelineStore::open(committed.path(), small_config()).expect("open");
    assert_eq!(store_committed.l0_layer_count(), 0);
    check_store(
        &store_committed,
        &model,
        &key_pool(),
        &lsns,
        "compaction committed",
    );
    assert_eq!(files(committed.path()), files(dir.path()));
}
