//! Branches: random operations on a parent and on a branch of it, each checked against
//! its own model after every step. The branch's model is the parent's writes (and
//! compaction images) at or below the branch point plus the branch's own; nothing the
//! parent does above the branch point may show on the branch. Both sides flush,
//! compact and crash independently; the branch is reopened with its ancestor.

use std::cell::RefCell;
use std::rc::Rc;

use tarn_wal::{Lsn, TimelineId};

use super::{Model, TempDir, TestRng, check_store, checking_materializer, key_pool, small_config};
use crate::store::{Ancestor, StoreError, TimelineStore};

const START_LSN: Lsn = Lsn(0x1000);
const PARENT: TimelineId = TimelineId(0xA);
const STEPS: usize = 300;

#[test]
fn branch_reads_its_parent_below_the_branch_point_and_only_its_own_writes_above() {
    for seed in 1..=4 {
        run(seed);
    }
}

/// One side of the test: a store, its model, and the last LSN put on it.
struct Side {
    store: Rc<RefCell<TimelineStore>>,
    model: Model,
    lsn: Lsn,
    durable: Lsn,
}

impl Side {
    fn put_some(&mut self, rng: &mut TestRng, keys: &[crate::store::Key]) {
        for _ in 0..1 + rng.below(3) {
            self.lsn = Lsn(self.lsn.0 + 1 + rng.below(16));
            let key = keys[rng.below(keys.len() as u64) as usize];
            let value = rng.value();
            self.store
                .borrow_mut()
                .put(key, self.lsn, value.clone())
                .expect("put");
            self.model.put(key, self.lsn, value);
        }
    }

    /// After a reopen: puts again what was above the durable LSN, as WAL would be
    /// ingested again.
    fn reingest(&mut self) {
        for (key, lsn, value) in self.model.writes_above(self.durable) {
            self.store
                .borrow_mut()
                .put(key, lsn, value)
                .expect("re-ingest");
        }
    }

    fn flush(&mut self) {
        let mut store = self.store.borrow_mut();
        store.freeze(self.lsn).expect("freeze");
        self.durable = store.flush().expect("flush");
    }

    /// Compacts with a materializer checked against `view` (the model reads must
    /// match), then teaches both models the images made.
    fn compact(&mut self, view: &Model) -> Vec<(crate::store::Key, Lsn, bytes::Bytes)> {
        let mut made = Vec::new();
        self.store
            .borrow_mut()
            .compact(&mut checking_materializer(view, &mut made))
            .expect("compact");
        self.model
            .images
            .extend(made.iter().map(|(k, l, i)| ((*k, *l), i.clone())));
        made
    }
}

/// The branch's view: the parent's history at or below `at` plus the branch's own.
fn branch_view(parent: &Model, branch: &Model, at: Lsn) -> Model {
    let mut view = parent.truncated(at);
    view.writes
        .extend(branch.writes.iter().map(|(k, v)| (*k, v.clone())));
    view.images
        .extend(branch.images.iter().map(|(k, v)| (*k, v.clone())));
    view
}

fn run(seed: u64) {
    let dir = TempDir::new("branch");
    let parent_dir = dir.path().join("parent");
    let branch_dir = dir.path().join("branch");
    let mut rng = TestRng::new(seed);
    let config = small_config();
    let keys = key_pool();
    let mut parent = Side {
        store: Rc::new(RefCell::new(
            TimelineStore::create(&parent_dir, START_LSN, config.clone()).expect("create"),
        )),
        model: Model::default(),
        lsn: START_LSN,
        durable: START_LSN,
    };
    for _ in 0..40 {
        parent.put_some(&mut rng, &keys);
        if rng.chance(15) {
            parent.flush();
        }
    }
    // Branch somewhere in the parent's history, often not at its end.
    let at = Lsn(START_LSN.0 + rng.below(parent.lsn.0 - START_LSN.0 + 1));
    let ancestor = |store: &Rc<RefCell<TimelineStore>>| Ancestor {
        timeline_id: PARENT,
        lsn: at,
        store: store.clone(),
    };
    let beyond = TimelineStore::create_branch(
        &dir.path().join("nope"),
        Ancestor {
            lsn: Lsn(parent.lsn.0 + 1),
            ..ancestor(&parent.store)
        },
        config.clone(),
    );
    assert!(
        matches!(beyond, Err(StoreError::BranchOutsideHistory { .. })),
        "{:?}",
        beyond.err()
    );
    let mut branch = Side {
        store: Rc::new(RefCell::new(
            TimelineStore::create_branch(&branch_dir, ancestor(&parent.store), config.clone())
                .expect("branch"),
        )),
        model: Model::default(),
        lsn: at,
        durable: at,
    };

    for step in 0..STEPS {
        let context = format!("seed {seed} step {step} (branch at {at})");
        let on_parent = rng.chance(50);
        match rng.below(100) {
            0..60 if on_parent => parent.put_some(&mut rng, &keys),
            0..60 => branch.put_some(&mut rng, &keys),
            60..75 if on_parent => parent.flush(),
            60..75 => branch.flush(),
            75..88 if on_parent => {
                let view = parent.model.clone();
                parent.compact(&view);
            }
            75..88 => {
                let view = branch_view(&parent.model, &branch.model, at);
                branch.compact(&view);
            }
            88..94 if on_parent => {
                // Crash of the parent: the branch keeps its handle to the old store, as
                // an executor would reopen the whole tree; so reopen both.
                drop(branch.store);
                let reopened = TimelineStore::open(&parent_dir, config.clone()).expect("reopen");
                parent.store = Rc::new(RefCell::new(reopened));
                parent.reingest();
                branch.store = Rc::new(RefCell::new(
                    TimelineStore::open_branch(
                        &branch_dir,
                        config.clone(),
                        Some(ancestor(&parent.store)),
                    )
                    .expect("reopen branch"),
                ));
                branch.reingest();
            }
            88..94 => {
                drop(branch.store);
                let wrong = TimelineStore::open(&branch_dir, config.clone());
                assert!(
                    matches!(wrong, Err(StoreError::WrongAncestor { .. })),
                    "{context}"
                );
                branch.store = Rc::new(RefCell::new(
                    TimelineStore::open_branch(
                        &branch_dir,
                        config.clone(),
                        Some(ancestor(&parent.store)),
                    )
                    .expect("reopen branch"),
                ));
                assert_eq!(
                    branch.store.borrow().durable_lsn(),
                    branch.durable,
                    "{context}"
                );
                branch.reingest();
            }
            _ => {
                let a = keys[rng.below(keys.len() as u64) as usize];
                let b = keys[rng.below(keys.len() as u64) as usize];
                let range = a.min(b)..a.max(b).next();
                let view = branch_view(&parent.model, &branch.model, at);
                let lsn = Lsn(at.0 + rng.below(branch.lsn.0 - at.0 + 1));
                let got = branch
                    .store
                    .borrow()
                    .get_range_at(&range, lsn)
                    .expect("range");
                let expected: Vec<_> = view
                    .keys_at(&range, lsn)
                    .into_iter()
                    .map(|key| (key, view.expected(key, lsn)))
                    .collect();
                assert_eq!(got, expected, "{context}: range {range:?} at {lsn}");
            }
        }
        let view = branch_view(&parent.model, &branch.model, at);
        let lsns = [
            branch.lsn,
            at,
            Lsn(at.0 + rng.below(branch.lsn.0 - at.0 + 1)),
            Lsn(START_LSN.0 + rng.below(at.0 - START_LSN.0 + 1)),
        ];
        for &key in &keys {
            for &lsn in &lsns {
                assert_eq!(
                    branch.store.borrow().get(key, lsn).expect("get"),
                    view.expected(key, lsn),
                    "{context}: branch get {key:?} at {lsn}"
                );
            }
        }
        check_store(
            &parent.store.borrow(),
            &parent.model,
            &keys,
            &[parent.lsn, at],
            &format!("{context} (parent)"),
        );
    }
    assert_eq!(branch.store.borrow().oldest_lsn(), START_LSN);
    assert_eq!(branch.store.borrow().history_start(), at);
}
