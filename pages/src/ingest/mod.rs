//! Ingest: WAL records, in LSN order, into a [`TimelineStore`]'s keyspace — every
//! effect a record's redo has on the files of a data directory, as versions at the
//! record's end LSN (EndRecPtr: what redo stamps into pages).
//!
//! Per record, [`Ingester::ingest`]:
//! - advances nextXid past the record's xid (ApplyWalRecord);
//! - applies the rmgr's effects that have no block reference: CLOG bits of commits and
//!   aborts (with subtransactions, and of COMMIT/ABORT_PREPARED), dropped relations,
//!   prepared transactions' state files, smgr create and truncate (with the visibility
//!   map's last page), CLOG and multixact pages (ZEROPAGE, CREATE_ID) and the removal
//!   of their segments (CLOG/TRUNCATE, MultiXact/TRUNCATE_ID), relmap files,
//!   CREATE DATABASE (WAL_LOG: the directory; FILE_COPY: every page of the template
//!   copied at this LSN), DROP DATABASE, the checkpoint counters, and the visibility
//!   map bits heap records clear;
//! - stores each block reference: an image marked BKPIMAGE_APPLY as the restored page
//!   ([`Value::Image`]), anything else as the record itself ([`DeltaRecord::Wal`],
//!   `will_init` when BKPBLOCK_WILL_INIT or a heap INIT_PAGE). A reference beyond the
//!   relation's end extends it as XLogReadBufferExtended does (zero pages, and the
//!   fork is created if missing);
//! - writes one version per changed key (several changes to one page in one record
//!   become one delta list), then the changed sizes and directories.
//!
//! Record types with page effects tarn cannot reproduce are an
//! [`IngestError::Unsupported`] naming type and LSN: Tablespace records
//! and databases outside pg_default, CommitTs (pg_commit_ts is not kept), the Hash,
//! Gin, Gist, SPGist, BRIN and Generic rmgrs and custom rmgrs (no native redo), and any
//! block reference of a record type [`crate::redo`] cannot replay. The ones with no
//! page effects are listed in [`no_page_effects`]. Nothing is skipped silently: the free
//! space map is the one thing tarn deliberately does not keep (basebackups leave it
//! out, Postgres rebuilds it), and skipped FSM blocks are counted.
//!
//! Submodules: `xact` (CLOG, commits, multixacts), `storage` (smgr, relmap,
//! databases, drops), [`import`] (a data directory as the base state), the encodings
//! of deltas and small values, and the SLRU arithmetic of [`slru`].
//!
//! **Dropping.** The store has no tombstones. A dropped relation's size key gets the
//! value [`SizeValue::Dropped`] and its directory entry goes away, so listings (for a
//! basebackup) come from the directories and a read of any block of a dropped
//! relation finds the size key first and answers "relation does not exist"
//! ([`crate::reconstruct::ReconstructError::RelationNotFound`]) — one extra key read,
//! which the read path needs anyway to answer reads beyond the end. DROP DATABASE does
//! this for every relation of the database and removes it from the database directory.
//! Old versions stay until garbage collection (which tarn does not have yet).
//!
//! **Image pushdown.** [`IngestConfig::image_threshold_deltas`] bounds the deltas a
//! read must replay: when a page's chain of deltas since its last image (or
//! initialising delta) would exceed it, the ingester stores the page itself instead of
//! the delta — materialised by [`crate::reconstruct`] — at the record's LSN. Chains
//! are counted in memory for the pages this ingester has written (bounded by
//! [`MAX_TRACKED_CHAINS`]); readers can also ask for an image of a page whose chain
//! they found too long ([`Ingester::request_image`]), which the next record writes.
//!
//! The ingester caches sizes and directories in memory (loaded from the store on
//! first use), so it must be the only writer of its store.

mod delta;
pub mod import;
mod records;
pub mod slru;
mod storage;
mod values;
mod xact;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{
    BlockRef, DecodeError, DecodedRecord, ForkNumber, ImageError, RawRecord, RelFileNode,
};

use crate::page::Page;
use crate::reconstruct::{self, ReconstructError};
use crate::redo::heap::XLOG_HEAP_INIT_PAGE;
use crate::redo::{
    RM_BTREE_ID, RM_HEAP_ID, RM_HEAP2_ID, RM_SEQ_ID, RM_SMGR_ID, RM_STANDBY_ID, RM_XLOG_ID,
    RedoError, RedoScratch, RedoSettings, is_supported,
};
use crate::store::{Key, SlruKind, StoreError, TimelineStore, Value};
use crate::vm::implicit_vm_clears;

pub use delta::{
    DELTA_FORMAT, DeltaError, DeltaRecord, DeltaRecordRef, DeltaRecords, Entries, ListEntry,
    MemberWrite, TRANSACTION_STATUS_ABORTED, TRANSACTION_STATUS_COMMITTED, decode_delta,
    delta_records, encode_delta,
};
pub use records::ParseError;
pub(crate) use values::checkpoint_offsets;
pub use values::{
    CheckpointState, DbDir, RelDir, SIZE_OF_CHECKPOINT, SizeValue, SlruDir, TwoPhaseDir, ValueError,
};

use records::*;
use slru::{advance_next_xid_past, multi_precedes, xid_precedes};

/// Default of [`IngestConfig::image_threshold_deltas`]: the number of deltas whose
/// replay costs about as much as writing one image. Measured in release on these
/// machines (`pages_datafiles` test, pgbench + DDL WAL): replaying a delta (delta and
/// WAL record decode + redo) takes 0.57-0.94 µs; putting and flushing an 8 KiB image
/// 11.8-14.8 µs against 1.1-3.7 µs for a 200-byte delta; a store lookup ~11 µs. Writing
/// an image thus costs what replaying 15-23 deltas does, so with 16 no read pays more for
/// replay than one image write (worst case ≈ 15 µs on top of the lookup), and images
/// add at most one page per 16 changes of a page (materialising one costs one such
/// replay at ingest).
pub const DEFAULT_IMAGE_THRESHOLD_DELTAS: u32 = 16;

/// Pages whose chain length the ingester tracks at most; beyond it the counts start
/// over (chains may then grow to twice the threshold until compaction's images).
pub const MAX_TRACKED_CHAINS: usize = 1 << 20;

/// Images requested by readers written per record at most, so that one record's
/// ingest stays bounded; the rest wait for the next records.
pub const MAX_REQUESTED_IMAGES_PER_RECORD: usize = 64;

/// Requests for images kept at most; more are dropped (they are hints).
pub const MAX_PENDING_IMAGE_REQUESTS: usize = 4096;

/// Blocks one block reference may extend a relation by. Postgres would extend by any
/// amount; more than 8 GiB of zero pages from one record is corrupt WAL, not work.
pub const MAX_EXTENSION_BLOCKS: u32 = 1 << 20;

/// GLOBALTABLESPACE_OID: the shared catalogs' tablespace (database 0).
pub const GLOBALTABLESPACE_OID: u32 = 1664;
/// DEFAULTTABLESPACE_OID.
pub const DEFAULTTABLESPACE_OID: u32 = 1663;

/// Forks whose pages tarn keeps (not the free space map).
const KEPT_FORKS: [ForkNumber; 3] = [
    ForkNumber::Main,
    ForkNumber::VisibilityMap,
    ForkNumber::Init,
];

/// How an ingester is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngestConfig {
    /// The cluster's settings at the first record ingested (`wal_log_hints` is then
    /// followed through XLOG_PARAMETER_CHANGE records).
    pub settings: RedoSettings,
    /// Pushdown threshold: at most this many deltas above a page's newest image.
    /// `0` disables pushdown.
    pub image_threshold_deltas: u32,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            settings: RedoSettings::default(),
            image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
        }
    }
}

/// Why a record could not be ingested. The store is unchanged by the failed record
/// (versions are written only after all its effects are computed) unless the error is
/// [`IngestError::Store`] raised while writing them.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{record} record at {lsn}: {reason}")]
    Unsupported {
        record: String,
        lsn: Lsn,
        reason: &'static str,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("record at {lsn}: {source}")]
    Parse { lsn: Lsn, source: ParseError },
    #[error("record at {lsn}: {source}")]
    Redo { lsn: Lsn, source: Box<RedoError> },
    #[error(
        "{record} record at {lsn}, block {block_id}: its page image does not restore: {source}"
    )]
    Image {
        record: String,
        lsn: Lsn,
        block_id: u8,
        source: ImageError,
    },
    #[error("{record} record at {lsn}: {detail}")]
    Inconsistent {
        record: String,
        lsn: Lsn,
        detail: String,
    },
    #[error("record at {lsn} ends at {end_lsn}, not above the store's last LSN {last}")]
    OutOfOrder { lsn: Lsn, end_lsn: Lsn, last: Lsn },
    #[error("value of {key:?} in the store: {source}")]
    Value { key: Key, source: ValueError },
    #[error("{key:?} holds deltas; sizes, directories and maps are always images")]
    NotAnImage { key: Key },
    #[error("record at {lsn} needs {key:?}: {source}")]
    Reconstruct {
        lsn: Lsn,
        key: Key,
        source: Box<ReconstructError>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Counts of what ingest did, for reports and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestStats {
    pub records: u64,
    /// Records whose type has no page effects (see [`no_page_effects`]).
    pub records_without_page_effects: u64,
    pub wal_deltas: u64,
    /// Full-page images stored from BKPIMAGE_APPLY block references.
    pub wal_images: u64,
    pub synthesized_deltas: u64,
    /// Zero pages written below a block that extends a relation, or below an SLRU
    /// page that extends (or recreates) its segment.
    pub zero_pages_for_extension: u64,
    pub vm_pages_for_extension: u64,
    pub implicit_vm_clears: u64,
    pub fsm_blocks_skipped: u64,
    /// XLOG_FPI_FOR_HINT block references without an image (full_page_writes off):
    /// redo does nothing with them.
    pub hint_blocks_without_image: u64,
    pub clog_updates: u64,
    pub multixacts: u64,
    /// CLOG/TRUNCATE and MultiXact/TRUNCATE_ID records applied.
    pub slru_truncations: u64,
    /// SLRU segments those removed.
    pub slru_segments_removed: u64,
    /// Truncations of an SLRU whose latest page precedes the cutoff: Postgres refuses
    /// them ("apparent wraparound") and so does ingest.
    pub slru_truncations_refused: u64,
    pub relations_created: u64,
    pub relations_truncated: u64,
    pub relations_dropped: u64,
    pub databases_created_wal_log: u64,
    pub databases_created_file_copy: u64,
    pub pages_copied_by_file_copy: u64,
    pub databases_dropped: u64,
    pub relmap_updates: u64,
    pub checkpoint_updates: u64,
    /// Images written instead of a delta because the chain reached the threshold.
    pub pushdown_images: u64,
    /// Images written because a reader asked.
    pub requested_images: u64,
    /// Pushdowns that failed to materialise (the delta was stored instead; the read
    /// will report the error).
    pub pushdown_failures: u64,
    /// Versions written, by key kind.
    pub puts: u64,
}

/// The changes of one record to pages, by key, and the small values it changed.
struct Batch {
    end_lsn: Lsn,
    pages: BTreeMap<Key, PendingPage>,
    images: BTreeMap<Key, Bytes>,
}

/// A page's changes in one record, applied in order.
struct PendingPage {
    /// The first record does not need the page before it.
    will_init: bool,
    records: Vec<DeltaRecord>,
}

impl Batch {
    fn new(end_lsn: Lsn) -> Batch {
        Batch {
            end_lsn,
            pages: BTreeMap::new(),
            images: BTreeMap::new(),
        }
    }

    /// Adds a change to `key`'s page. A change that initialises the page (`resets`)
    /// replaces whatever the record did to the page before.
    fn push(&mut self, key: Key, record: DeltaRecord, resets: bool) {
        let resets = resets || record.replaces_page();
        match self.pages.get_mut(&key) {
            Some(pending) if !resets => pending.records.push(record),
            _ => {
                self.pages.insert(
                    key,
                    PendingPage {
                        will_init: resets,
                        records: vec![record],
                    },
                );
            }
        }
    }
}

/// How an extension fills the pages it adds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Extension {
    /// XLogReadBufferExtended: zero pages up to (not including) the block read.
    ZeroPages,
    /// vm_extend: PageInit'd pages up to and including the block read.
    VmInitPages,
}

/// RecordNewMultiXact's replay-side memory of which offsets page it initialised
/// (last_initialized_offsets_page, pre_initialized_offsets_page in multixact.c).
#[derive(Clone, Copy, Debug, Default)]
struct MultiXactReplay {
    last_initialized_offsets_page: Option<u32>,
    pre_initialized_offsets_page: Option<u32>,
}

/// Turns WAL records into versions of a [`TimelineStore`]. See the module docs.
pub struct Ingester {
    config: IngestConfig,
    wal_log_hints: bool,
    /// Relation fork sizes (`None`: does not exist or was dropped).
    rel_sizes: HashMap<(RelFileNode, ForkNumber), Option<u32>>,
    rel_dirs: HashMap<(u32, u32), RelDir>,
    db_dir: Option<DbDir>,
    slru_dirs: HashMap<SlruKind, SlruDir>,
    slru_sizes: HashMap<(SlruKind, u32), Option<u32>>,
    /// Each SLRU's latest_page_number (SimpleLruZeroPage's last page), once known.
    slru_latest_pages: HashMap<SlruKind, u32>,
    twophase_dir: Option<TwoPhaseDir>,
    checkpoint: Option<CheckpointState>,
    multixact: MultiXactReplay,
    /// Deltas above the newest image (or initialising delta) of pages written here.
    chains: HashMap<Key, u32>,
    image_requests: BTreeSet<Key>,
    // Values changed by the record being ingested.
    dirty_sizes: BTreeSet<(RelFileNode, ForkNumber)>,
    dirty_rel_dirs: BTreeSet<(u32, u32)>,
    dirty_db_dir: bool,
    dirty_slru_dirs: BTreeSet<SlruKind>,
    dirty_slru_sizes: BTreeSet<(SlruKind, u32)>,
    dirty_twophase_dir: bool,
    dirty_checkpoint: bool,
    stats: IngestStats,
}

/// Record types with no effect on the files tarn keeps, by rmgr: their redo touches
/// only in-memory state (hot standby, caches), files tarn does not keep (logical
/// decoding mappings, replication origins), or nothing. `rmgr_info` is `info & 0xF0`.
pub fn no_page_effects(rmid: u8, info: u8) -> bool {
    let rmgr_info = info & 0xF0;
    match rmid {
        RM_XLOG_ID => matches!(
            rmgr_info,
            XLOG_NOOP
                | XLOG_SWITCH
                | XLOG_BACKUP_END
                | XLOG_RESTORE_POINT
                | XLOG_FPW_CHANGE
                | XLOG_END_OF_RECOVERY
                | XLOG_OVERWRITE_CONTRECORD
        ),
        RM_XACT_ID => matches!(
            info & XLOG_XACT_OPMASK,
            XLOG_XACT_ASSIGNMENT | XLOG_XACT_INVALIDATIONS
        ),
        // Locks, running transactions, invalidations: hot standby state.
        RM_STANDBY_ID => true,
        // Heap/TRUNCATE is for logical decoding only (smgr truncates the files).
        RM_HEAP_ID => rmgr_info & 0x70 == 0x30,
        // Heap2/REWRITE (logical rewrite mappings) and NEW_CID (logical decoding).
        RM_HEAP2_ID => matches!(rmgr_info & 0x70, 0x00 | 0x70),
        RM_BTREE_ID => rmgr_info == crate::redo::btree::XLOG_BTREE_REUSE_PAGE,
        // Replication origin progress and logical messages: not kept by tarn.
        RM_REPLORIGIN_ID | RM_LOGICALMSG_ID => true,
        _ => false,
    }
}

impl Ingester {
    /// An ingester for a store whose state (sizes, directories, checkpoint) it loads
    /// from the store as needed.
    pub fn new(config: IngestConfig) -> Ingester {
        Ingester {
            wal_log_hints: config.settings.wal_log_hints,
            config,
            rel_sizes: HashMap::new(),
            rel_dirs: HashMap::new(),
            db_dir: None,
            slru_dirs: HashMap::new(),
            slru_sizes: HashMap::new(),
            slru_latest_pages: HashMap::new(),
            twophase_dir: None,
            checkpoint: None,
            multixact: MultiXactReplay::default(),
            chains: HashMap::new(),
            image_requests: BTreeSet::new(),
            dirty_sizes: BTreeSet::new(),
            dirty_rel_dirs: BTreeSet::new(),
            dirty_db_dir: false,
            dirty_slru_dirs: BTreeSet::new(),
            dirty_slru_sizes: BTreeSet::new(),
            dirty_twophase_dir: false,
            dirty_checkpoint: false,
            stats: IngestStats::default(),
        }
    }

    pub fn config(&self) -> &IngestConfig {
        &self.config
    }

    pub fn stats(&self) -> &IngestStats {
        &self.stats
    }

    /// The settings redo uses for records from now on.
    pub fn settings(&self) -> RedoSettings {
        RedoSettings {
            data_checksums: self.config.settings.data_checksums,
            wal_log_hints: self.wal_log_hints,
        }
    }

    /// Asks for an image of `key` at the next record ingested (a reader found its
    /// chain too long). A hint: dropped when too many are pending.
    pub fn request_image(&mut self, key: Key) {
        if key.is_page() && self.image_requests.len() < MAX_PENDING_IMAGE_REQUESTS {
            self.image_requests.insert(key);
        }
    }

    /// Decodes and ingests one record as read from WAL.
    pub fn ingest(
        &mut self,
        store: &mut TimelineStore,
        raw: &RawRecord,
    ) -> Result<(), IngestError> {
        let record = raw.decode()?;
        self.ingest_decoded(store, &record, &raw.bytes)
    }

    /// Ingests `record`, whose bytes as written (header included) are `raw`.
    pub fn ingest_decoded(
        &mut self,
        store: &mut TimelineStore,
        record: &DecodedRecord,
        raw: &Bytes,
    ) -> Result<(), IngestError> {
        let last = store.last_lsn();
        if record.end_lsn <= last {
            return Err(IngestError::OutOfOrder {
                lsn: record.lsn,
                end_lsn: record.end_lsn,
                last,
            });
        }
        let mut batch = Batch::new(record.end_lsn);
        let result = self
            .apply_effects(store, &mut batch, record, raw)
            .and_then(|()| self.write(store, batch));
        if result.is_err() {
            // The caches may hold changes of the failed record: forget them all (they
            // reload from the store, which has none of them).
            self.reset_caches();
        }
        self.stats.records += 1;
        result
    }

    fn reset_caches(&mut self) {
        self.rel_sizes.clear();
        self.rel_dirs.clear();
        self.db_dir = None;
        self.slru_dirs.clear();
        self.slru_sizes.clear();
        self.slru_latest_pages.clear();
        self.twophase_dir = None;
        self.checkpoint = None;
        self.dirty_sizes.clear();
        self.dirty_rel_dirs.clear();
        self.dirty_db_dir = false;
        self.dirty_slru_dirs.clear();
        self.dirty_slru_sizes.clear();
        self.dirty_twophase_dir = false;
        self.dirty_checkpoint = false;
    }

    fn apply_effects(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
        raw: &Bytes,
    ) -> Result<(), IngestError> {
        // ApplyWalRecord: nextXid must be beyond the record's xid.
        self.advance_next_xid(store, record.xid)?;

        if no_page_effects(record.rmid, record.info) {
            self.stats.records_without_page_effects += 1;
        } else {
            match record.rmid {
                RM_XLOG_ID => self.xlog(store, record)?,
                RM_XACT_ID => self.xact(store, batch, record)?,
                RM_SMGR_ID => self.smgr(store, batch, record)?,
                RM_CLOG_ID => self.clog(store, batch, record)?,
                RM_DBASE_ID => self.dbase(store, batch, record)?,
                RM_MULTIXACT_ID => self.multixact(store, batch, record)?,
                RM_RELMAP_ID => self.relmap(batch, record)?,
                RM_HEAP_ID | RM_HEAP2_ID => self.vm_clears(store, batch, record)?,
                RM_BTREE_ID | RM_SEQ_ID => {}
                RM_TBLSPC_ID => {
                    return Err(unsupported(
                        record,
                        "tablespaces other than pg_default and pg_global are not supported",
                    ));
                }
                RM_COMMIT_TS_ID => {
                    return Err(unsupported(
                        record,
                        "commit timestamps (track_commit_timestamp) are not kept",
                    ));
                }
                RM_HASH_ID | RM_GIN_ID | RM_GIST_ID | RM_SPGIST_ID | RM_BRIN_ID | RM_GENERIC_ID => {
                    return Err(unsupported(record, "no native redo for this access method"));
                }
                _ => return Err(unsupported(record, "unknown resource manager")),
            }
        }
        for block in &record.blocks {
            self.block_ref(store, batch, record, raw, block)?;
        }
        Ok(())
    }

    // ---- block references ------------------------------------------------------

    fn block_ref(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
        raw: &Bytes,
        block: &BlockRef,
    ) -> Result<(), IngestError> {
        if block.fork == ForkNumber::Fsm {
            self.stats.fsm_blocks_skipped += 1;
            return Ok(());
        }
        if !is_supported(record.rmid, record.info) {
            return Err(unsupported(record, "no native redo for this record type"));
        }
        if record.rmid == RM_XLOG_ID
            && record.rmgr_info() == XLOG_FPI_FOR_HINT
            && block.image.is_none()
        {
            // xlog_redo skips such a block (an FPI_FOR_HINT written with
            // full_page_writes off) without reading it: no extension either.
            self.stats.hint_blocks_without_image += 1;
            return Ok(());
        }
        let key = Key::rel_block(block.rel, block.fork, block.block);
        let extended = self.extend(
            store,
            batch,
            record,
            block.rel,
            block.fork,
            block.block,
            Extension::ZeroPages,
        )?;
        if let Some(image) = block.image.as_ref().filter(|image| image.apply) {
            // XLogReadBufferForRedoExtended: BLK_RESTORED, the redo routine leaves the
            // page alone; the LSN is stamped unless the page is new.
            let mut page = Page::zeroed();
            image
                .restore_into(page.as_bytes_mut())
                .map_err(|source| IngestError::Image {
                    record: record.type_name(),
                    lsn: record.lsn,
                    block_id: block.block_id,
                    source,
                })?;
            if !page.is_new() {
                page.set_lsn(record.end_lsn);
            }
            batch.push(
                key,
                DeltaRecord::Image(Bytes::copy_from_slice(page.as_bytes())),
                true,
            );
            self.stats.wal_images += 1;
            return Ok(());
        }
        let heap_init_page = matches!(record.rmid, RM_HEAP_ID | RM_HEAP2_ID)
            && record.info & XLOG_HEAP_INIT_PAGE != 0
            && block.block_id == 0;
        let will_init = block.will_init || heap_init_page;
        if extended && !will_init {
            // The page redo reads was added by this extension: zeros, whatever an
            // earlier incarnation of the block held.
            batch.push(key, DeltaRecord::ZeroPage, true);
        }
        batch.push(
            key,
            DeltaRecord::Wal {
                block_id: block.block_id,
                settings: self.settings(),
                lsn: record.lsn,
                end_lsn: record.end_lsn,
                record: raw.clone(),
            },
            will_init,
        );
        self.stats.wal_deltas += 1;
        Ok(())
    }

    /// Makes `block` of the fork exist: creates the fork if needed (smgrcreate), and
    /// extends it with `how`'s pages if the block is at or beyond its end. Returns
    /// whether the block itself was added.
    #[allow(clippy::too_many_arguments)]
    fn extend(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
        rel: RelFileNode,
        fork: ForkNumber,
        block: u32,
        how: Extension,
    ) -> Result<bool, IngestError> {
        let nblocks = match self.rel_size(store, rel, fork)? {
            Some(nblocks) => nblocks,
            None => {
                self.create_fork(store, rel, fork)?;
                0
            }
        };
        if block < nblocks {
            return Ok(false);
        }
        if block - nblocks >= MAX_EXTENSION_BLOCKS {
            return Err(IngestError::Inconsistent {
                record: record.type_name(),
                lsn: record.lsn,
                detail: format!(
                    "block {block} of {rel:?} {fork:?} would extend it by more than \
                     {MAX_EXTENSION_BLOCKS} blocks (it has {nblocks})"
                ),
            });
        }
        let fill_end = match how {
            Extension::ZeroPages => block,
            Extension::VmInitPages => block + 1,
        };
        for fill in nblocks..fill_end {
            let key = Key::rel_block(rel, fork, fill);
            match how {
                Extension::ZeroPages => {
                    batch.push(key, DeltaRecord::ZeroPage, true);
                    self.stats.zero_pages_for_extension += 1;
                }
                Extension::VmInitPages => {
                    batch.push(key, DeltaRecord::InitPage, true);
                    self.stats.vm_pages_for_extension += 1;
                }
            }
        }
        self.set_rel_size(rel, fork, Some(block + 1));
        Ok(true)
    }

    // ---- heap: implicit visibility map clears ------------------------------------

    /// The `visibilitymap_pin` + `visibilitymap_clear` of heap redo: the VM fork is
    /// extended by vm_extend if needed (initialised pages), then the bits cleared.
    fn vm_clears(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        let clears = implicit_vm_clears(record).map_err(|source| IngestError::Redo {
            lsn: record.lsn,
            source: Box::new(source),
        })?;
        for clear in clears {
            let vm = clear.vm_page();
            self.extend(
                store,
                batch,
                record,
                vm.rel,
                ForkNumber::VisibilityMap,
                vm.block,
                Extension::VmInitPages,
            )?;
            batch.push(
                Key::rel_block(vm.rel, vm.fork, vm.block),
                DeltaRecord::ClearVmBits {
                    heap_block: clear.heap_block,
                    flags: clear.flags,
                },
                false,
            );
            self.stats.implicit_vm_clears += 1;
            self.stats.synthesized_deltas += 1;
        }
        Ok(())
    }

    // ---- XLOG: counters --------------------------------------------------------

    fn xlog(&mut self, store: &TimelineStore, record: &DecodedRecord) -> Result<(), IngestError> {
        let parse = |source| IngestError::Parse {
            lsn: record.lsn,
            source,
        };
        match record.rmgr_info() {
            XLOG_FPI | XLOG_FPI_FOR_HINT => {} // block references only
            XLOG_NEXTOID => {
                let next_oid = parse_next_oid(record).map_err(parse)?;
                let state = self.checkpoint_mut(store)?;
                state.set_next_oid(next_oid);
                self.dirty_checkpoint = true;
            }
            XLOG_PARAMETER_CHANGE => {
                self.wal_log_hints = parse_wal_log_hints(record).map_err(parse)?;
            }
            info @ (XLOG_CHECKPOINT_SHUTDOWN | XLOG_CHECKPOINT_ONLINE) => {
                let logged = checkpoint_bytes(record).map_err(parse).and_then(|bytes| {
                    CheckpointState::from_bytes(bytes).map_err(|source| IngestError::Value {
                        key: Key::checkpoint(),
                        source,
                    })
                })?;
                let state = self.checkpoint_mut(store)?;
                *state = if info == XLOG_CHECKPOINT_SHUTDOWN {
                    // "In a SHUTDOWN checkpoint, believe the counters exactly."
                    logged
                } else {
                    merge_online_checkpoint(state, &logged)
                };
                self.dirty_checkpoint = true;
            }
            _ => return Err(unsupported(record, "unknown XLOG record")),
        }
        Ok(())
    }

    fn advance_next_xid(&mut self, store: &TimelineStore, xid: u32) -> Result<(), IngestError> {
        if xid == 0 {
            return Ok(());
        }
        let state = self.checkpoint_mut(store)?;
        if let Some(next) = advance_next_xid_past(state.next_full_xid(), xid) {
            state.set_next_full_xid(next);
            self.dirty_checkpoint = true;
        }
        Ok(())
    }

    // ---- cached values -------------------------------------------------------------------

    fn rel_size(
        &mut self,
        store: &TimelineStore,
        rel: RelFileNode,
        fork: ForkNumber,
    ) -> Result<Option<u32>, IngestError> {
        if let Some(size) = self.rel_sizes.get(&(rel, fork)) {
            return Ok(*size);
        }
        let key = Key::rel_size(rel, fork);
        let size = match load_image(store, key)? {
            Some(bytes) => SizeValue::decode(&bytes)
                .map_err(|source| IngestError::Value { key, source })?
                .nblocks(),
            None => None,
        };
        self.rel_sizes.insert((rel, fork), size);
        Ok(size)
    }

    fn set_rel_size(&mut self, rel: RelFileNode, fork: ForkNumber, nblocks: Option<u32>) {
        self.rel_sizes.insert((rel, fork), nblocks);
        self.dirty_sizes.insert((rel, fork));
    }

    fn rel_dir_mut(
        &mut self,
        store: &TimelineStore,
        spc: u32,
        db: u32,
    ) -> Result<&mut RelDir, IngestError> {
        match self.rel_dirs.entry((spc, db)) {
            Entry::Occupied(entry) => Ok(entry.into_mut()),
            Entry::Vacant(entry) => {
                let key = Key::rel_dir(spc, db);
                let dir = match load_image(store, key)? {
                    Some(bytes) => RelDir::decode(&bytes)
                        .map_err(|source| IngestError::Value { key, source })?,
                    None => RelDir::default(),
                };
                Ok(entry.insert(dir))
            }
        }
    }

    fn db_dir_mut(&mut self, store: &TimelineStore) -> Result<&mut DbDir, IngestError> {
        if self.db_dir.is_none() {
            let key = Key::db_dir();
            let dir = match load_image(store, key)? {
                Some(bytes) => {
                    DbDir::decode(&bytes).map_err(|source| IngestError::Value { key, source })?
                }
                None => DbDir::default(),
            };
            self.db_dir = Some(dir);
        }
        Ok(self.db_dir.as_mut().expect("just loaded"))
    }

    fn twophase_dir_mut(&mut self, store: &TimelineStore) -> Result<&mut TwoPhaseDir, IngestError> {
        if self.twophase_dir.is_none() {
            let key = Key::twophase_dir();
            let dir = match load_image(store, key)? {
                Some(bytes) => TwoPhaseDir::decode(&bytes)
                    .map_err(|source| IngestError::Value { key, source })?,
                None => TwoPhaseDir::default(),
            };
            self.twophase_dir = Some(dir);
        }
        Ok(self.twophase_dir.as_mut().expect("just loaded"))
    }

    fn checkpoint_mut(
        &mut self,
        store: &TimelineStore,
    ) -> Result<&mut CheckpointState, IngestError> {
        if self.checkpoint.is_none() {
            let key = Key::checkpoint();
            let state = match load_image(store, key)? {
                Some(bytes) => CheckpointState::from_bytes(&bytes)
                    .map_err(|source| IngestError::Value { key, source })?,
                // No checkpoint yet: counters start at zero and the first checkpoint
                // record sets them.
                None => CheckpointState::from_bytes(&[0; SIZE_OF_CHECKPOINT]).expect("88 bytes"),
            };
            self.checkpoint = Some(state);
        }
        Ok(self.checkpoint.as_mut().expect("just loaded"))
    }

    /// The segment's size in pages, `None` if it does not exist. A value that fails
    /// to load counts as missing here; the read path reports it.
    fn slru_size(&mut self, store: &TimelineStore, slru: SlruKind, segno: u32) -> Option<u32> {
        if let Some(size) = self.slru_sizes.get(&(slru, segno)) {
            return *size;
        }
        let size = load_image(store, Key::slru_segment_size(slru, segno))
            .ok()
            .flatten()
            .and_then(|bytes| SizeValue::decode(&bytes).ok())
            .and_then(SizeValue::nblocks);
        self.slru_sizes.insert((slru, segno), size);
        size
    }

    fn slru_dir_mut(&mut self, store: &TimelineStore, slru: SlruKind) -> &mut SlruDir {
        self.slru_dirs.entry(slru).or_insert_with(|| {
            load_image(store, Key::slru_dir(slru))
                .ok()
                .flatten()
                .and_then(|bytes| SlruDir::decode(&bytes).ok())
                .unwrap_or_default()
        })
    }

    // ---- writing ---------------------------------------------------------------------------

    /// Writes the record's versions: pages (with pushdown), then the small values.
    fn write(&mut self, store: &mut TimelineStore, batch: Batch) -> Result<(), IngestError> {
        let end_lsn = batch.end_lsn;
        let before = store.last_lsn();
        let mut values: Vec<(Key, Value)> =
            Vec::with_capacity(batch.pages.len() + batch.images.len());
        let mut written: HashSet<Key> = HashSet::new();
        for (key, pending) in batch.pages {
            let value = self.page_value(store, key, pending, before, end_lsn);
            written.insert(key);
            values.push((key, value));
        }
        // Images readers asked for, of pages this record leaves alone.
        let requested: Vec<Key> = self
            .image_requests
            .iter()
            .copied()
            .filter(|key| !written.contains(key))
            .take(MAX_REQUESTED_IMAGES_PER_RECORD)
            .collect();
        for key in requested {
            self.image_requests.remove(&key);
            // A page that no longer exists (dropped, truncated) needs no image.
            if let Ok(page) = reconstruct::get_page_at_lsn(store, key, before) {
                values.push((key, Value::Image(Bytes::copy_from_slice(page.as_bytes()))));
                self.chains.remove(&key);
                self.stats.requested_images += 1;
            }
        }
        for key in written {
            self.image_requests.remove(&key);
        }
        for (rel, fork) in std::mem::take(&mut self.dirty_sizes) {
            let size = match self.rel_sizes.get(&(rel, fork)).copied().flatten() {
                Some(nblocks) => SizeValue::Exists(nblocks),
                None => SizeValue::Dropped,
            };
            values.push((Key::rel_size(rel, fork), Value::Image(size.encode().into())));
        }
        for (spc, db) in std::mem::take(&mut self.dirty_rel_dirs) {
            let dir = self.rel_dirs.get(&(spc, db)).cloned().unwrap_or_default();
            values.push((Key::rel_dir(spc, db), Value::Image(dir.encode().into())));
        }
        if std::mem::take(&mut self.dirty_db_dir) {
            let dir = self.db_dir.clone().unwrap_or_default();
            values.push((Key::db_dir(), Value::Image(dir.encode().into())));
        }
        for slru in std::mem::take(&mut self.dirty_slru_dirs) {
            let dir = self.slru_dirs.get(&slru).cloned().unwrap_or_default();
            values.push((Key::slru_dir(slru), Value::Image(dir.encode().into())));
        }
        for (slru, segno) in std::mem::take(&mut self.dirty_slru_sizes) {
            let size = match self.slru_sizes.get(&(slru, segno)).copied().flatten() {
                Some(nblocks) => SizeValue::Exists(nblocks),
                None => SizeValue::Dropped,
            };
            values.push((
                Key::slru_segment_size(slru, segno),
                Value::Image(size.encode().into()),
            ));
        }
        if std::mem::take(&mut self.dirty_twophase_dir) {
            let dir = self.twophase_dir.clone().unwrap_or_default();
            values.push((Key::twophase_dir(), Value::Image(dir.encode().into())));
        }
        if std::mem::take(&mut self.dirty_checkpoint)
            && let Some(state) = &self.checkpoint
        {
            values.push((
                Key::checkpoint(),
                Value::Image(Bytes::copy_from_slice(state.as_bytes())),
            ));
            self.stats.checkpoint_updates += 1;
        }
        for (key, bytes) in batch.images {
            values.push((key, Value::Image(bytes)));
        }
        for (key, value) in values {
            store.put(key, end_lsn, value)?;
            self.stats.puts += 1;
        }
        if self.chains.len() > MAX_TRACKED_CHAINS {
            self.chains.clear();
        }
        Ok(())
    }

    /// The version to store for a page's changes: an image if that is all it is or if
    /// the chain reached the threshold (pushdown), else the delta list.
    fn page_value(
        &mut self,
        store: &TimelineStore,
        key: Key,
        pending: PendingPage,
        before: Lsn,
        end_lsn: Lsn,
    ) -> Value {
        if let [DeltaRecord::Image(image)] = pending.records.as_slice() {
            self.chains.remove(&key);
            return Value::Image(image.clone());
        }
        let delta = encode_delta(&pending.records);
        let chain = if pending.will_init {
            1
        } else {
            self.chains.get(&key).copied().unwrap_or(0) + 1
        };
        let threshold = self.config.image_threshold_deltas;
        let wanted = self.image_requests.contains(&key);
        if (threshold > 0 && chain > threshold) || wanted {
            match materialize(store, key, pending.will_init, &delta, before, end_lsn) {
                Ok(page) => {
                    self.chains.remove(&key);
                    if wanted {
                        self.stats.requested_images += 1;
                    } else {
                        self.stats.pushdown_images += 1;
                    }
                    return Value::Image(Bytes::copy_from_slice(page.as_bytes()));
                }
                Err(error) => {
                    tracing::warn!(%error, ?key, "image pushdown failed; storing the delta");
                    self.stats.pushdown_failures += 1;
                }
            }
        }
        self.chains.insert(key, chain);
        Value::Delta {
            will_init: pending.will_init,
            record: delta,
        }
    }
}

/// The page after `delta` (the changes at `end_lsn`, encoded as they would be stored):
/// its versions up to `before` replayed, then the delta, as a later read would.
fn materialize(
    store: &TimelineStore,
    key: Key,
    will_init: bool,
    delta: &[u8],
    before: Lsn,
    end_lsn: Lsn,
) -> Result<Page, ReconstructError> {
    let mut page = if will_init {
        Page::zeroed()
    } else {
        reconstruct::page_at_lsn_unchecked(store, key, before)?.0
    };
    reconstruct::apply_delta(key, end_lsn, delta, &mut page, &mut RedoScratch::new())?;
    Ok(page)
}

/// The ONLINE checkpoint half of xlog_redo: the counters move only forward (nextXid,
/// nextMulti, nextMultiOffset, oldestMulti, oldestXid), nextOid stays (NEXTOID records
/// track it); the other fields are the record's.
fn merge_online_checkpoint(current: &CheckpointState, logged: &CheckpointState) -> CheckpointState {
    let mut merged = *logged;
    merged.set_next_full_xid(current.next_full_xid().max(logged.next_full_xid()));
    merged.set_next_oid(current.next_oid());
    // MultiXactAdvanceNextMXact.
    if !multi_precedes(current.next_multi(), logged.next_multi()) {
        merged.set_next_multi(current.next_multi());
    }
    if !multi_precedes(current.next_multi_offset(), logged.next_multi_offset()) {
        merged.set_next_multi_offset(current.next_multi_offset());
    }
    // MultiXactAdvanceOldest.
    if !multi_precedes(current.oldest_multi(), logged.oldest_multi()) {
        merged.set_oldest_multi(current.oldest_multi());
        merged.set_oldest_multi_db(current.oldest_multi_db());
    }
    // SetTransactionIdLimit only if the logged oldestXid is newer.
    if !xid_precedes(current.oldest_xid(), logged.oldest_xid()) {
        merged.set_oldest_xid(current.oldest_xid());
        merged.set_oldest_xid_db(current.oldest_xid_db());
    }
    merged
}

/// A small value's bytes at the store's last LSN (`None` if it has no version).
fn load_image(store: &TimelineStore, key: Key) -> Result<Option<Bytes>, IngestError> {
    let data = store.get(key, store.last_lsn())?;
    if !data.deltas.is_empty() {
        return Err(IngestError::NotAnImage { key });
    }
    Ok(data.image.map(|(_, bytes)| bytes))
}

fn unsupported(record: &DecodedRecord, reason: &'static str) -> IngestError {
    IngestError::Unsupported {
        record: record.type_name(),
        lsn: record.lsn,
        reason,
    }
}

fn inconsistent(record: &DecodedRecord, detail: impl Into<String>) -> IngestError {
    IngestError::Inconsistent {
        record: record.type_name(),
        lsn: record.lsn,
        detail: detail.into(),
    }
}

fn check_tablespace(record: &DecodedRecord, spc: u32) -> Result<(), IngestError> {
    if spc == DEFAULTTABLESPACE_OID || spc == GLOBALTABLESPACE_OID {
        Ok(())
    } else {
        Err(unsupported(
            record,
            "databases in tablespaces other than pg_default are not supported",
        ))
    }
}

#[cfg(test)]
mod tests;
