//! [`TimelineStore`]: the page store of one timeline, in one directory.
//!
//! Life of a version: [`TimelineStore::put`] adds it to the open in-memory layer;
//! [`TimelineStore::freeze`] closes that layer at an LSN; [`TimelineStore::flush`] writes
//! frozen layers as level 0 delta layer files and commits them with the new durable LSN
//! in the metadata file; [`TimelineStore::compact`] merges them and adds images. Reads
//! see all of it at any LSN.
//!
//! Branches: a timeline created by [`TimelineStore::create_branch`] has an [`Ancestor`]
//! (its parent's store and the branch LSN). Its own layers hold only what was written
//! on it above the branch LSN; a read that does not find a key's base (an image or an
//! initialising delta) in them continues in the parent at the branch LSN (recursively),
//! so creating a branch copies nothing. Keys are never deleted (drops and truncations
//! are versions of sizes and directories), so a key the branch has no base for is
//! exactly the parent's at the branch point.
//!
//! Crash model: the metadata file is the commit point. After a crash,
//! [`TimelineStore::open`] loads exactly the layers it lists, removes any other layer or
//! temporary file (leftovers of an interrupted flush or compaction) and reports the
//! durable LSN: the caller re-ingests WAL from there (versions above it were only in
//! memory).

use std::cell::{Cell, RefCell};
use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tarn_wal::{Lsn, TimelineId};

use super::compaction::{self, CompactionReport};
use super::delta_layer::{DeltaLayer, LEVEL_FLUSHED};
use super::durable::{self, TEMP_SUFFIX, TempNames, corrupt, io_error};
use super::image_layer::ImageLayer;
use super::key::Key;
use super::layer_file::{LayerFile, LayerKind, LayerSummary, LayerWriter};
use super::layer_map::LayerMap;
use super::memory_layer::InMemoryLayer;
use super::metadata::{METADATA_FILE, TimelineMetadata};
use super::read_path::{self, ReadMetrics, ReadStats};
use super::value::{ReconstructData, Value};
use super::{Result, StoreError};

/// The error a materializer (redo) returns.
pub type MaterializeError = Box<dyn std::error::Error + Send + Sync>;

/// The largest value a put accepts. Page images are 8 KiB and per-page records a few
/// pages at most; the bound keeps one value within a block's u32 length with room.
pub const MAX_VALUE_BYTES: usize = 16 << 20;

/// Sizes and thresholds of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Blocks of layer files are cut after about this many bytes: the unit of a read.
    pub target_block_bytes: usize,
    /// Compaction cuts output layers after about this many bytes.
    pub target_layer_bytes: u64,
    /// Compaction runs once this many level 0 layers exist (at least 2).
    pub l0_compaction_threshold: usize,
    /// A key gets an image once it has more deltas than this above its newest image.
    pub image_threshold_deltas: u32,
    /// A key range gets a dense image layer once more on-disk layers than this overlap
    /// it above its newest dense image layer.
    pub max_layers_above_dense_image: usize,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            target_block_bytes: 32 * 1024,
            target_layer_bytes: 64 << 20,
            l0_compaction_threshold: 4,
            image_threshold_deltas: 16,
            max_layers_above_dense_image: 8,
        }
    }
}

impl StoreConfig {
    fn validate(&self) -> Result<()> {
        let fail = |what: &str| Err(StoreError::Config(what.to_string()));
        if self.target_block_bytes == 0 || self.target_layer_bytes == 0 {
            return fail("block and layer sizes must be positive");
        }
        if self.l0_compaction_threshold < 2 {
            return fail(
                "l0_compaction_threshold must be at least 2: merging one layer changes nothing",
            );
        }
        if self.max_layers_above_dense_image < 2 {
            return fail("max_layers_above_dense_image must be at least 2");
        }
        Ok(())
    }
}

/// The timeline a branch was created from, and where.
#[derive(Clone)]
pub struct Ancestor {
    pub timeline_id: TimelineId,
    /// The branch point: the branch sees the parent's versions at or below it.
    pub lsn: Lsn,
    /// The parent's store, shared with its owner (one executor owns a whole tree).
    pub store: Rc<RefCell<TimelineStore>>,
}

impl std::fmt::Debug for Ancestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ancestor({} at {})", self.timeline_id, self.lsn)
    }
}

impl Ancestor {
    /// Completes `data` (what a branch's own layers hold for `key` at `lsn`) with the
    /// parent's versions at the branch point when the branch has no base for it.
    pub(crate) fn complete(
        &self,
        key: Key,
        lsn: Lsn,
        data: ReconstructData,
    ) -> Result<ReconstructData> {
        if has_base(&data) {
            return Ok(data);
        }
        let parent = self
            .store
            .try_borrow()
            .map_err(|_| StoreError::AncestorBusy {
                timeline_id: self.timeline_id,
            })?;
        let mut below = parent.get(key, lsn.min(self.lsn))?;
        below.deltas.extend(data.deltas);
        Ok(below)
    }
}

/// Whether `data` starts from an image or an initialising delta, so nothing older
/// matters.
fn has_base(data: &ReconstructData) -> bool {
    data.image.is_some()
        || data
            .deltas
            .first()
            .is_some_and(|(_, value)| value.will_init())
}

/// The versioned page store of one timeline. Not `Sync` (read metrics are kept in a
/// `Cell`, ancestors are shared through `Rc`); meant to be owned by one executor.
pub struct TimelineStore {
    dir: PathBuf,
    config: StoreConfig,
    /// Set for a branch: where reads continue below the branch's own history.
    ancestor: Option<Ancestor>,
    /// The timeline's own history starts above it.
    start_lsn: Lsn,
    /// Every version at or below it is in `layers`.
    durable_lsn: Lsn,
    open: InMemoryLayer,
    /// Frozen, not yet flushed, oldest first.
    frozen: Vec<InMemoryLayer>,
    layers: LayerMap,
    temp_names: TempNames,
    metrics: Cell<ReadMetrics>,
}

impl TimelineStore {
    /// Creates an empty timeline in `dir` (created if missing) whose history starts
    /// above `start_lsn`: the first put must be above it.
    pub fn create(dir: &Path, start_lsn: Lsn, config: StoreConfig) -> Result<TimelineStore> {
        config.validate()?;
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        if dir.join(METADATA_FILE).exists() {
            return Err(StoreError::TimelineExists {
                path: dir.to_path_buf(),
            });
        }
        TimelineMetadata {
            durable_lsn: start_lsn,
            layers: Vec::new(),
            start_lsn: Some(start_lsn),
            ancestor: None,
        }
        .write(dir)?;
        TimelineStore::open(dir, config)
    }

    /// Creates a branch of `ancestor.store` at `ancestor.lsn` in `dir`: an empty
    /// timeline whose history starts above the branch point and whose reads fall
    /// through to the parent below it. Nothing is copied. The branch point must lie
    /// within the parent's history: above the start of the parent's own history (or
    /// anywhere its ancestors hold, if it is a branch itself) and at or below the
    /// parent's last LSN.
    pub fn create_branch(
        dir: &Path,
        ancestor: Ancestor,
        config: StoreConfig,
    ) -> Result<TimelineStore> {
        config.validate()?;
        {
            let parent = ancestor
                .store
                .try_borrow()
                .map_err(|_| StoreError::AncestorBusy {
                    timeline_id: ancestor.timeline_id,
                })?;
            let oldest = parent.oldest_lsn();
            let newest = parent.last_lsn();
            if ancestor.lsn < oldest || ancestor.lsn > newest {
                return Err(StoreError::BranchOutsideHistory {
                    timeline_id: ancestor.timeline_id,
                    lsn: ancestor.lsn,
                    oldest,
                    newest,
                });
            }
        }
        fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
        if dir.join(METADATA_FILE).exists() {
            return Err(StoreError::TimelineExists {
                path: dir.to_path_buf(),
            });
        }
        TimelineMetadata {
            durable_lsn: ancestor.lsn,
            layers: Vec::new(),
            start_lsn: Some(ancestor.lsn),
            ancestor: Some((ancestor.timeline_id, ancestor.lsn)),
        }
        .write(dir)?;
        TimelineStore::open_branch(dir, config, Some(ancestor))
    }

    /// The parent timeline and branch LSN recorded in `dir`'s metadata, if it is a
    /// branch: what must be opened first and passed to [`Self::open_branch`].
    pub fn recorded_ancestor(dir: &Path) -> Result<Option<(TimelineId, Lsn)>> {
        Ok(TimelineMetadata::read(dir)?.ancestor)
    }

    /// Opens the timeline in `dir`: loads the layers its metadata lists and removes
    /// leftovers of interrupted writes. Ingest resumes above [`Self::durable_lsn`].
    /// A branch must be opened with [`Self::open_branch`].
    pub fn open(dir: &Path, config: StoreConfig) -> Result<TimelineStore> {
        TimelineStore::open_branch(dir, config, None)
    }

    /// [`Self::open`] of a timeline that may be a branch: `ancestor` must be the parent
    /// its metadata names, at the recorded branch LSN.
    pub fn open_branch(
        dir: &Path,
        config: StoreConfig,
        ancestor: Option<Ancestor>,
    ) -> Result<TimelineStore> {
        config.validate()?;
        let metadata = TimelineMetadata::read(dir)?;
        let metadata_path = dir.join(METADATA_FILE);
        let given = ancestor.as_ref().map(|a| (a.timeline_id, a.lsn));
        if given != metadata.ancestor {
            let describe = |ancestor: Option<(TimelineId, Lsn)>| match ancestor {
                Some((id, lsn)) => format!("a branch of {id} at {lsn}"),
                None => "not a branch".to_string(),
            };
            return Err(StoreError::WrongAncestor {
                path: dir.to_path_buf(),
                detail: format!(
                    "the timeline is {}, it was opened as {}",
                    describe(metadata.ancestor),
                    describe(given)
                ),
            });
        }
        let mut layers = LayerMap::default();
        for name in &metadata.layers {
            let file = LayerFile::open(&dir.join(name))?;
            let summary = file.summary().clone();
            if summary.file_name() != *name {
                return Err(corrupt(
                    file.path(),
                    0,
                    format!("layer holds {summary:?}, its name says otherwise"),
                ));
            }
            if summary.top_lsn() > metadata.durable_lsn {
                return Err(corrupt(
                    &metadata_path,
                    0,
                    format!(
                        "layer {name} reaches above the durable LSN {}",
                        metadata.durable_lsn
                    ),
                ));
            }
            let inserted = match summary.kind {
                LayerKind::Delta => layers.insert_delta(Arc::new(DeltaLayer::new(file))),
                LayerKind::SparseImage | LayerKind::DenseImage => {
                    layers.insert_image(Arc::new(ImageLayer::new(file)))
                }
            };
            inserted.map_err(|detail| corrupt(&metadata_path, 0, detail))?;
        }
        remove_leftovers(dir, &metadata.layers)?;
        // Format 1 metadata has no start: the lowest layer's start (minus one) is it.
        let start_lsn = metadata.start_lsn.unwrap_or_else(|| {
            layers.lowest_lsn().map_or(metadata.durable_lsn, |lowest| {
                Lsn(lowest.0.saturating_sub(1))
            })
        });
        Ok(TimelineStore {
            start_lsn,
            dir: dir.to_path_buf(),
            config,
            ancestor,
            durable_lsn: metadata.durable_lsn,
            open: InMemoryLayer::new(next_lsn(metadata.durable_lsn)),
            frozen: Vec::new(),
            layers,
            temp_names: TempNames::default(),
            metrics: Cell::new(ReadMetrics::default()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn ancestor(&self) -> Option<&Ancestor> {
        self.ancestor.as_ref()
    }

    /// The oldest LSN a read of this timeline can see history at: the parent's oldest
    /// for a branch, else the start of its own history.
    pub fn oldest_lsn(&self) -> Lsn {
        match &self.ancestor {
            Some(ancestor) => ancestor
                .store
                .try_borrow()
                .map_or(ancestor.lsn, |parent| parent.oldest_lsn()),
            None => self.start_lsn,
        }
    }

    /// The LSN this timeline's own history starts above (its creation LSN).
    pub fn history_start(&self) -> Lsn {
        self.start_lsn
    }

    /// Every version at or below this LSN is on disk; WAL above it must be re-ingested
    /// after a restart.
    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// The highest LSN put (or frozen, or durable): puts must not go below it.
    pub fn last_lsn(&self) -> Lsn {
        self.open
            .last_lsn()
            .unwrap_or(Lsn(self.open.start_lsn().0 - 1))
    }

    /// Adds a version. LSNs must not decrease and must be above the last freeze; a key
    /// has at most one value per LSN.
    pub fn put(&mut self, key: Key, lsn: Lsn, value: Value) -> Result<()> {
        let len = value.payload().len();
        if len > MAX_VALUE_BYTES {
            return Err(StoreError::ValueTooLarge {
                key,
                lsn,
                len,
                limit: MAX_VALUE_BYTES,
            });
        }
        self.open.put(key, lsn, value)
    }

    /// Closes the open layer at `up_to`: it holds the versions up to and including that
    /// LSN, and puts continue above it. Freezing again at the same LSN does nothing.
    pub fn freeze(&mut self, up_to: Lsn) -> Result<()> {
        let floor = self.last_lsn();
        if up_to == floor && self.open.is_empty() {
            return Ok(());
        }
        if up_to < floor || up_to == Lsn::MAX {
            return Err(StoreError::FreezeBelow { up_to, floor });
        }
        let mut layer = std::mem::replace(&mut self.open, InMemoryLayer::new(next_lsn(up_to)));
        layer.freeze(up_to);
        self.frozen.push(layer);
        Ok(())
    }

    /// Writes every frozen layer to a level 0 delta layer file and commits them with the
    /// new durable LSN (the last freeze); one fsync per file, two of the directory, one
    /// metadata write. Returns the durable LSN.
    pub fn flush(&mut self) -> Result<Lsn> {
        let Some(durable_lsn) = self.frozen.last().and_then(|layer| layer.frozen_at()) else {
            return Ok(self.durable_lsn);
        };
        let mut written = Vec::new();
        let result = self.write_frozen(&mut written).and_then(|()| {
            durable::sync_dir(&self.dir)?;
            let mut names = self.layers.layer_names();
            names.extend(
                written
                    .iter()
                    .map(|layer: &Arc<DeltaLayer>| layer.summary().file_name()),
            );
            TimelineMetadata {
                durable_lsn,
                layers: names,
                start_lsn: Some(self.start_lsn),
                ancestor: self.ancestor.as_ref().map(|a| (a.timeline_id, a.lsn)),
            }
            .write(&self.dir)
        });
        if let Err(e) = result {
            for layer in &written {
                let _ = durable::remove_file(layer.file().path());
            }
            return Err(e);
        }
        for layer in written {
            self.layers
                .insert_delta(layer)
                .unwrap_or_else(|e| panic!("flushed layer breaks the layer map: {e}"));
        }
        self.frozen.clear();
        self.durable_lsn = durable_lsn;
        Ok(durable_lsn)
    }

    fn write_frozen(&mut self, written: &mut Vec<Arc<DeltaLayer>>) -> Result<()> {
        for layer in &self.frozen {
            if layer.is_empty() {
                continue;
            }
            let up_to = layer.frozen_at().expect("frozen layers have an end");
            let mut writer = LayerWriter::create(
                self.temp_names.next_path(&self.dir),
                self.config.target_block_bytes,
            )?;
            for (key, lsn, value) in layer.iter() {
                writer.push(key, lsn, value)?;
            }
            let summary = LayerSummary {
                kind: LayerKind::Delta,
                level: LEVEL_FLUSHED,
                key_range: Key::all(),
                lsn_range: layer.start_lsn()..next_lsn(up_to),
            };
            written.push(Arc::new(DeltaLayer::new(
                writer.finish(summary, &self.dir)?,
            )));
        }
        Ok(())
    }

    /// Compacts if enough level 0 layers piled up (see the `compaction` module).
    /// `materialize` builds a key's image at an LSN from its versions (redo); it is
    /// called for every image written, with no deltas when the newest version already
    /// is an image (return it unchanged).
    pub fn compact(
        &mut self,
        materialize: &mut dyn FnMut(
            Key,
            Lsn,
            ReconstructData,
        ) -> std::result::Result<Bytes, MaterializeError>,
    ) -> Result<CompactionReport> {
        let outcome = compaction::compact(
            &self.dir,
            &self.layers,
            self.durable_lsn,
            &self.config,
            &mut self.temp_names,
            self.ancestor.as_ref(),
            materialize,
        )?;
        let Some(outcome) = outcome else {
            return Ok(CompactionReport::default());
        };
        let mut after = self.layers.clone();
        for name in &outcome.removed {
            assert!(
                after.remove(name),
                "compaction removed unknown layer {name}"
            );
        }
        for layer in &outcome.added_deltas {
            after
                .insert_delta(layer.clone())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for layer in &outcome.added_images {
            after
                .insert_image(layer.clone())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let added_paths = outcome
            .added_deltas
            .iter()
            .map(|d| d.file().path().to_path_buf())
            .chain(
                outcome
                    .added_images
                    .iter()
                    .map(|i| i.file().path().to_path_buf()),
            );
        let commit = durable::sync_dir(&self.dir).and_then(|()| {
            TimelineMetadata {
                durable_lsn: self.durable_lsn,
                layers: after.layer_names(),
                start_lsn: Some(self.start_lsn),
                ancestor: self.ancestor.as_ref().map(|a| (a.timeline_id, a.lsn)),
            }
            .write(&self.dir)
        });
        if let Err(e) = commit {
            for path in added_paths {
                let _ = durable::remove_file(&path);
            }
            return Err(e);
        }
        self.layers = after;
        // Committed: the merged L0 files are garbage now. Failing to remove them here is
        // harmless (open removes unlisted layer files).
        for name in &outcome.removed {
            if let Err(e) = durable::remove_file(&self.dir.join(name)) {
                tracing::warn!("removing compacted layer: {e}");
            }
        }
        Ok(outcome.report)
    }

    /// The versions of `key` needed to build it at `lsn`.
    pub fn get(&self, key: Key, lsn: Lsn) -> Result<ReconstructData> {
        self.get_with_stats(key, lsn).map(|(data, _)| data)
    }

    /// [`Self::get`] and what it cost.
    pub fn get_with_stats(&self, key: Key, lsn: Lsn) -> Result<(ReconstructData, ReadStats)> {
        let memory = self.memory_layers();
        let (mut data, stats) = read_path::get(&memory, &self.layers, key, lsn)?;
        if let Some(ancestor) = &self.ancestor {
            data = ancestor.complete(key, lsn, data)?;
        }
        let mut metrics = self.metrics.get();
        metrics.record(&stats);
        self.metrics.set(metrics);
        Ok((data, stats))
    }

    /// Keys in `range` with a version at or below `lsn`, ascending (a branch's own
    /// and its ancestors' at the branch point).
    pub fn keys_at(&self, range: &Range<Key>, lsn: Lsn) -> Vec<Key> {
        let own = read_path::keys_at(&self.memory_layers(), &self.layers, range, lsn);
        let Some(ancestor) = &self.ancestor else {
            return own;
        };
        // A parent in use by its owner cannot be mid-mutation here (one executor owns
        // the tree), so a failed borrow is a bug, not a state to serve around.
        let parent = ancestor.store.try_borrow().unwrap_or_else(|_| {
            panic!(
                "ancestor {} borrowed mutably during a read",
                ancestor.timeline_id
            )
        });
        let mut keys = parent.keys_at(range, lsn.min(ancestor.lsn));
        keys.extend(own);
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// [`Self::get`] of every key in `range` with a version at or below `lsn`
    /// (e.g. all blocks of a relation, all entries of a directory), ascending.
    pub fn get_range_at(
        &self,
        range: &Range<Key>,
        lsn: Lsn,
    ) -> Result<Vec<(Key, ReconstructData)>> {
        self.keys_at(range, lsn)
            .into_iter()
            .map(|key| self.get(key, lsn).map(|data| (key, data)))
            .collect()
    }

    /// The newest LSN at which `key` was written, if ever (on a branch: on it, or on
    /// its ancestors at or below the branch point).
    pub fn latest_lsn_of(&self, key: Key) -> Option<Lsn> {
        let own = read_path::latest_lsn_of(&self.memory_layers(), &self.layers, key);
        if own.is_some() {
            return own;
        }
        let ancestor = self.ancestor.as_ref()?;
        let parent = ancestor.store.try_borrow().ok()?;
        parent.latest_lsn_at_or_below(key, ancestor.lsn)
    }

    /// The newest LSN at or below `lsn` at which `key` was written.
    fn latest_lsn_at_or_below(&self, key: Key, lsn: Lsn) -> Option<Lsn> {
        match self.latest_lsn_of(key) {
            Some(latest) if latest <= lsn => Some(latest),
            Some(_) => {
                let data = self.get(key, lsn).ok()?;
                data.deltas
                    .last()
                    .map(|(lsn, _)| *lsn)
                    .or(data.image.map(|(lsn, _)| lsn))
            }
            None => None,
        }
    }

    /// Totals and maxima of the reads so far.
    pub fn metrics(&self) -> ReadMetrics {
        self.metrics.get()
    }

    pub fn reset_metrics(&self) {
        self.metrics.set(ReadMetrics::default());
    }

    /// Payload bytes in the open in-memory layer (what the caller watches to decide when
    /// to freeze).
    pub fn open_layer_bytes(&self) -> usize {
        self.open.payload_bytes()
    }

    pub fn frozen_layer_count(&self) -> usize {
        self.frozen.len()
    }

    pub fn l0_layer_count(&self) -> usize {
        self.layers.l0_deltas().len()
    }

    /// On-disk layers (delta and image).
    pub fn layer_count(&self) -> usize {
        self.layers.len()
    }

    /// Reads and checks every block of every layer file (a scrub).
    pub fn verify(&self) -> Result<()> {
        for delta in self.layers.deltas() {
            delta.file().verify()?;
        }
        for image in self.layers.images() {
            image.file().verify()?;
        }
        Ok(())
    }

    /// In-memory layers, newest first.
    fn memory_layers(&self) -> Vec<&InMemoryLayer> {
        std::iter::once(&self.open)
            .chain(self.frozen.iter().rev())
            .collect()
    }
}

fn next_lsn(lsn: Lsn) -> Lsn {
    Lsn(lsn.0.checked_add(1).expect("LSN space exhausted"))
}

/// Removes temporary files and layer files the metadata does not list.
fn remove_leftovers(dir: &Path, listed: &[String]) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(io_error("list", dir))?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let leftover = name.ends_with(TEMP_SUFFIX)
            || (LayerSummary::looks_like_layer_file(name) && !listed.iter().any(|l| l == name));
        if leftover {
            tracing::warn!(
                file = name,
                "removing a leftover of an interrupted flush or compaction"
            );
            durable::remove_file(&entry.path())?;
            removed = true;
        }
    }
    if removed {
        durable::sync_dir(dir)?;
    }
    Ok(())
}
