//! Flipped bytes in layer and metadata files: opening, reading or scrubbing reports
//! [`StoreError::Corrupt`] naming the file, and every read that succeeds is still right.

use std::fs;
use std::path::Path;

use tarn_wal::Lsn;

use super::{Model, TempDir, TestRng, checking_materializer, key_pool, small_config};
use crate::store::{Key, StoreError, TimelineStore};

const START_LSN: Lsn = Lsn(0x1000);
/// Flips per file: every byte of small files, an even spread of larger ones.
const FLIPS_PER_FILE: usize = 160;

/// A store with L1 delta layers, image layers and an L0 layer on top.
fn build(dir: &Path) -> (Model, Vec<Lsn>) {
    let mut store = TimelineStore::create(dir, START_LSN, small_config()).expect("create");
    let mut model = Model::default();
    let mut rng = TestRng::new(7);
    let keys = key_pool();
    let mut lsn = START_LSN;
    let mut lsns = vec![START_LSN];
    for round in 0..4 {
        for _ in 0..40 {
            lsn = Lsn(lsn.0 + 8);
            let key = keys[rng.below(keys.len() as u64) as usize];
            let value = rng.value();
            store.put(key, lsn, value.clone()).expect("put");
            model.put(key, lsn, value);
        }
        store.freeze(lsn).expect("freeze");
        store.flush().expect("flush");
        lsns.push(lsn);
        lsns.push(Lsn(lsn.0 - 100));
        if round == 2 {
            let mut made = Vec::new();
            let report = store
                .compact(&mut checking_materializer(&model, &mut made))
                .expect("compact");
            assert!(
                report.l0_layers_merged == 3 && report.images_written > 0,
                "{report:?}"
            );
            model
                .images
                .extend(made.into_iter().map(|(k, l, i)| ((k, l), i)));
        }
    }
    (model, lsns)
}

fn is_corrupt_naming(error: &StoreError, file: &Path) -> bool {
    matches!(error, StoreError::Corrupt { path, .. } if path == file)
}

#[test]
fn flipped_bytes_are_detected_never_misread() {
    let dir = TempDir::new("corrupt");
    let (model, lsns) = build(dir.path());
    let keys = key_pool();
    let mut files: Vec<_> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");

    let mut flips = 0;
    for file in &files {
        let original = fs::read(file).expect("read");
        let stride = original.len().div_ceil(FLIPS_PER_FILE).max(1);
        // An even spread, plus every byte of the tail (footer / end of index).
        let tail = original.len().saturating_sub(48)..original.len();
        let offsets: Vec<usize> = (0..original.len()).step_by(stride).chain(tail).collect();
        for offset in offsets {
            let mut damaged = original.clone();
            damaged[offset] ^= 0x5A;
            fs::write(file, &damaged).expect("damage");
            check_damaged(dir.path(), file, offset, &model, &keys, &lsns);
            flips += 1;
        }
        fs::write(file, &original).expect("restore");
    }
    assert!(flips > 500, "{flips}");
    // Restored, everything reads back.
    let store = TimelineStore::open(dir.path(), small_config()).expect("open");
    store.verify().expect("verify");
}

fn check_damaged(
    dir: &Path,
    file: &Path,
    offset: usize,
    model: &Model,
    keys: &[Key],
    lsns: &[Lsn],
) {
    let context = format!("{} byte {offset}", file.display());
    let store = match TimelineStore::open(dir, small_config()) {
        Ok(store) => store,
        Err(e) => {
            assert!(
                is_corrupt_naming(&e, file),
                "{context}: open failed with {e}"
            );
            return;
        }
    };
    let scrub = store.verify();
    assert!(
        scrub.as_ref().is_err_and(|e| is_corrupt_naming(e, file)),
        "{context}: verify returned {scrub:?}"
    );
    for &key in keys {
        for &lsn in lsns {
            match store.get(key, lsn) {
                Ok(data) => assert_eq!(data, model.expected(key, lsn), "{context}: wrong answer"),
                Err(e) => assert!(is_corrupt_naming(&e, file), "{context}: {e}"),
            }
        }
    }
}

#[test]
fn corrupt_block_error_names_file_and_offset() {
    let dir = TempDir::new("corrupt-message");
    let mut store = TimelineStore::create(dir.path(), START_LSN, small_config()).expect("create");
    let key = key_pool()[3];
    store
        .put(
            key,
            Lsn(0x1008),
            crate::store::Value::Image(vec![7u8; 100].into()),
        )
        .expect("put");
    store.freeze(Lsn(0x1008)).expect("freeze");
    store.flush().expect("flush");
    let layer = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "delta"))
        .expect("a delta layer");
    let mut bytes = fs::read(&layer).expect("read");
    bytes[40] ^= 1; // inside the image payload of block 0
    fs::write(&layer, &bytes).expect("damage");

    let store = TimelineStore::open(dir.path(), small_config()).expect("the index is intact");
    let error = store.get(key, Lsn(0x1008)).expect_err("damaged block");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "corrupt file {} at offset 0: block 0 checksum mismatch",
            layer.display()
        )),
        "{message}"
    );

    fs::write(dir.path().join("metadata"), b"TARNMETA garbage").expect("damage metadata");
    let error = TimelineStore::open(dir.path(), small_config())
        .err()
        .expect("metadata damaged");
    assert!(
        matches!(&error, StoreError::Corrupt { path, .. } if path.ends_with("metadata")),
        "{error}"
    );
}
