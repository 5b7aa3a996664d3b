//! GetPage@LSN: a page as it was at an LSN, built from the store's versions — the
//! newest image at or below the LSN (or a zero page when the history starts with an
//! initialising delta) with every later delta replayed in order: WAL records through
//! [`crate::redo`], tarn's synthesised changes ([`DeltaRecord`]) through the routines
//! they mirror.
//!
//! Reads check existence first, as a read of the file would: a relation fork whose
//! size key is missing or says dropped at the LSN is
//! [`ReconstructError::RelationNotFound`]; a block at or beyond the size is
//! [`ReconstructError::BeyondEof`] (the caller decides between a zero page and an
//! error, as Postgres's callers do). Sizes come from [`get_rel_size`].
//!
//! Replay is a tight loop over the stored deltas that allocates nothing per record:
//! each delta is read in place ([`delta_records`]), each WAL record in it decoded in
//! place ([`decode_record_ref`]) and redone with working memory reused from record to
//! record ([`RedoScratch`]; [`PageReader`] and the [`materializer`] keep theirs across
//! reads). The page returned is the one allocation of a read.
//!
//! [`PageReader`] counts the deltas each read replays ([`ReconstructMetrics`], a
//! histogram by powers of two) and notes pages whose chain exceeded the pushdown
//! threshold, for the ingester to write an image of
//! ([`Ingester::request_image`](crate::ingest::Ingester::request_image)).
//! [`materializer`] builds the images compaction writes.

use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{DecodeError, DecodedRecordRef, ForkNumber, RelFileNode, decode_record_ref};

use crate::ingest::slru::{clog_set_status, set_multixact_member, set_multixact_offset};
use crate::ingest::{
    DeltaError, DeltaRecordRef, MAX_PENDING_IMAGE_REQUESTS, SizeValue, ValueError, delta_records,
};
use crate::page::Page;
use crate::redo::{RedoError, RedoScratch, apply_record_ref};
use crate::store::{
    Key, KeyClass, MaterializeError, ReconstructData, SlruKind, StoreError, TimelineStore, Value,
};
use crate::vm::{clear_vm_bits, truncate_vm_page};

/// Why a page could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReconstructError {
    #[error("relation {rel:?} fork {fork:?} does not exist at {lsn}")]
    RelationNotFound {
        rel: RelFileNode,
        fork: ForkNumber,
        lsn: Lsn,
    },
    #[error("{key:?} is beyond the end ({nblocks} blocks) at {lsn}")]
    BeyondEof { key: Key, nblocks: u32, lsn: Lsn },
    #[error("SLRU segment {segno:04X} of {slru:?} does not exist at {lsn}")]
    SlruSegmentNotFound {
        slru: SlruKind,
        segno: u32,
        lsn: Lsn,
    },
    #[error("{key:?} does not hold a page")]
    NotAPage { key: Key },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("value of {key:?}: {source}")]
    Value { key: Key, source: ValueError },
    #[error("{key:?} has an image of {len} bytes at {lsn}, not a page")]
    BadImage { key: Key, lsn: Lsn, len: usize },
    #[error("delta of {key:?} at {lsn}: {source}")]
    Delta {
        key: Key,
        lsn: Lsn,
        source: DeltaError,
    },
    #[error("delta of {key:?}: {source}")]
    Decode { key: Key, source: DecodeError },
    #[error("delta of {key:?}: its WAL record's block {block_id} is {found}, not this page")]
    WrongBlock {
        key: Key,
        block_id: u8,
        found: String,
    },
    #[error("replaying a delta of {key:?}: {source}")]
    Redo { key: Key, source: Box<RedoError> },
}

/// What one replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Delta versions replayed (what pushdown bounds).
    pub deltas: u32,
    /// Records inside them (a delta version holds one or more).
    pub records: u32,
}

/// The size of a relation fork at `lsn`, in blocks.
pub fn get_rel_size(
    store: &TimelineStore,
    rel: RelFileNode,
    fork: ForkNumber,
    lsn: Lsn,
) -> Result<u32, ReconstructError> {
    match size_at(store, Key::rel_size(rel, fork), lsn)? {
        Some(SizeValue::Exists(nblocks)) => Ok(nblocks),
        Some(SizeValue::Dropped) | None => {
            Err(ReconstructError::RelationNotFound { rel, fork, lsn })
        }
    }
}

/// Whether a relation fork exists at `lsn`.
pub fn rel_exists(
    store: &TimelineStore,
    rel: RelFileNode,
    fork: ForkNumber,
    lsn: Lsn,
) -> Result<bool, ReconstructError> {
    match get_rel_size(store, rel, fork, lsn) {
        Ok(_) => Ok(true),
        Err(ReconstructError::RelationNotFound { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// The size of an SLRU segment at `lsn`, in pages.
pub fn get_slru_segment_size(
    store: &TimelineStore,
    slru: SlruKind,
    segno: u32,
    lsn: Lsn,
) -> Result<u32, ReconstructError> {
    match size_at(store, Key::slru_segment_size(slru, segno), lsn)? {
        Some(SizeValue::Exists(nblocks)) => Ok(nblocks),
        Some(SizeValue::Dropped) | None => {
            Err(ReconstructError::SlruSegmentNotFound { slru, segno, lsn })
        }
    }
}

fn size_at(
    store: &TimelineStore,
    key: Key,
    lsn: Lsn,
) -> Result<Option<SizeValue>, ReconstructError> {
    let data = store.get(key, lsn)?;
    if !data.deltas.is_empty() {
        return Err(ReconstructError::Value {
            key,
            source: ValueError {
                what: "size",
                len: 0,
                detail: "stored as a delta".to_string(),
            },
        });
    }
    data.image
        .map(|(_, bytes)| {
            SizeValue::decode(&bytes).map_err(|source| ReconstructError::Value { key, source })
        })
        .transpose()
}

/// Checks that `key` names a page that exists at `lsn` (the read a file would allow).
fn check_exists(store: &TimelineStore, key: Key, lsn: Lsn) -> Result<(), ReconstructError> {
    let (nblocks, blk) = match key.classify() {
        KeyClass::RelBlock { rel, fork, blk } => (get_rel_size(store, rel, fork, lsn)?, blk),
        KeyClass::SlruPage { slru, segno, blk } => {
            (get_slru_segment_size(store, slru, segno, lsn)?, blk)
        }
        _ => return Err(ReconstructError::NotAPage { key }),
    };
    if blk >= nblocks {
        return Err(ReconstructError::BeyondEof { key, nblocks, lsn });
    }
    Ok(())
}

/// The page `key` (a relation block or SLRU page) as it was at `lsn`. A page within
/// the relation (segment) without any version reads as zeros, as an unwritten part
/// of a file does.
pub fn get_page_at_lsn(
    store: &TimelineStore,
    key: Key,
    lsn: Lsn,
) -> Result<Page, ReconstructError> {
    check_exists(store, key, lsn)?;
    Ok(page_at_lsn_unchecked(store, key, lsn)?.0)
}

/// [`get_page_at_lsn`] without the existence check (ingest uses it for pages it
/// knows exist).
pub fn page_at_lsn_unchecked(
    store: &TimelineStore,
    key: Key,
    lsn: Lsn,
) -> Result<(Page, ReplayStats), ReconstructError> {
    let data = store.get(key, lsn)?;
    replay(key, &data)
}

/// Replays `data` (a key's versions, as [`TimelineStore::get`] returns them). See
/// [`replay_with`] to reuse working memory across calls.
pub fn replay(key: Key, data: &ReconstructData) -> Result<(Page, ReplayStats), ReconstructError> {
    replay_with(key, data, &mut RedoScratch::new())
}

/// [`replay`] with working memory the caller keeps: once `scratch` has served every
/// kind of record, the page returned is the only allocation, however many deltas.
pub fn replay_with(
    key: Key,
    data: &ReconstructData,
    scratch: &mut RedoScratch,
) -> Result<(Page, ReplayStats), ReconstructError> {
    let mut page = match &data.image {
        Some((lsn, image)) => Page::from_bytes(image).ok_or(ReconstructError::BadImage {
            key,
            lsn: *lsn,
            len: image.len(),
        })?,
        // The history starts with an initialising delta (or, for a page never
        // initialised by WAL, without anything: zeros, as the file would read).
        None => Page::zeroed(),
    };
    let mut stats = ReplayStats::default();
    // Every WAL record is decoded into this one (its block array set up once, when
    // the first WAL record comes).
    let mut decoded = None;
    for (lsn, value) in &data.deltas {
        let Value::Delta { record, .. } = value else {
            unreachable!("ReconstructData holds only deltas above its image");
        };
        stats.records += apply_delta_in(key, *lsn, record, &mut page, scratch, &mut decoded)?;
        stats.deltas += 1;
    }
    Ok((page, stats))
}

/// Applies the encoded delta of `key` stored at `lsn` (every record in it, in order)
/// to the page. Returns how many records it held.
pub fn apply_delta(
    key: Key,
    lsn: Lsn,
    delta: &[u8],
    page: &mut Page,
    scratch: &mut RedoScratch,
) -> Result<u32, ReconstructError> {
    apply_delta_in(key, lsn, delta, page, scratch, &mut None)
}

/// [`apply_delta`], its WAL records decoded into `decoded` (set up by the first).
fn apply_delta_in<'d>(
    key: Key,
    lsn: Lsn,
    delta: &'d [u8],
    page: &mut Page,
    scratch: &mut RedoScratch,
    decoded: &mut Option<DecodedRecordRef<'d>>,
) -> Result<u32, ReconstructError> {
    let corrupt = |source| ReconstructError::Delta { key, lsn, source };
    let mut count = 0;
    for record in delta_records(delta).map_err(corrupt)? {
        apply_delta_record_in(key, page, record.map_err(corrupt)?, scratch, decoded)?;
        count += 1;
    }
    Ok(count)
}

/// Applies one change to `key`'s page.
pub fn apply_delta_record(
    key: Key,
    page: &mut Page,
    record: DeltaRecordRef<'_>,
    scratch: &mut RedoScratch,
) -> Result<(), ReconstructError> {
    apply_delta_record_in(key, page, record, scratch, &mut None)
}

/// [`apply_delta_record`], a WAL record decoded into `decoded` (set up if `None`).
fn apply_delta_record_in<'d>(
    key: Key,
    page: &mut Page,
    record: DeltaRecordRef<'d>,
    scratch: &mut RedoScratch,
    decoded: &mut Option<DecodedRecordRef<'d>>,
) -> Result<(), ReconstructError> {
    match record {
        DeltaRecordRef::Wal {
            block_id,
            settings,
            lsn,
            end_lsn,
            record,
        } => {
            let decoded = decoded.get_or_insert_with(DecodedRecordRef::default);
            decode_record_ref(lsn, end_lsn, record, decoded)
                .map_err(|source| ReconstructError::Decode { key, source })?;
            // The record must reference this very page: a mix-up here would be a
            // silently wrong page.
            let block = decoded.block(block_id);
            let matches = block
                .is_some_and(|block| key == Key::rel_block(block.rel, block.fork, block.block));
            if !matches {
                return Err(ReconstructError::WrongBlock {
                    key,
                    block_id,
                    found: block.map_or_else(
                        || "missing".to_string(),
                        |block| format!("{:?}", Key::rel_block(block.rel, block.fork, block.block)),
                    ),
                });
            }
            apply_record_ref(decoded, block_id, page, &settings, scratch).map_err(|source| {
                ReconstructError::Redo {
                    key,
                    source: Box::new(source),
                }
            })
        }
        DeltaRecordRef::Image(image) => {
            page.as_bytes_mut().copy_from_slice(image);
            Ok(())
        }
        DeltaRecordRef::ZeroPage => {
            page.as_bytes_mut().fill(0);
            Ok(())
        }
        DeltaRecordRef::InitPage => {
            page.init(0);
            Ok(())
        }
        DeltaRecordRef::ClearVmBits { heap_block, flags } => {
            clear_vm_bits(page, heap_block, flags);
            Ok(())
        }
        DeltaRecordRef::TruncateVmPage { new_heap_nblocks } => {
            truncate_vm_page(page, new_heap_nblocks);
            Ok(())
        }
        DeltaRecordRef::ClogSetStatus { status, xids } => {
            for xid in xids.iter() {
                clog_set_status(page, xid, status);
            }
            Ok(())
        }
        DeltaRecordRef::MultiXactOffsets { entries } => {
            for (entry, offset) in entries.iter() {
                set_multixact_offset(page, entry, offset);
            }
            Ok(())
        }
        DeltaRecordRef::MultiXactMembers { members } => {
            for member in members.iter() {
                set_multixact_member(page, &member);
            }
            Ok(())
        }
    }
}

/// The materializer [`TimelineStore::compact`] needs: a key's image from its
/// versions. Keys that are not pages are always stored as images and come back as
/// they are.
pub fn materializer() -> impl FnMut(Key, Lsn, ReconstructData) -> Result<Bytes, MaterializeError> {
    let mut scratch = RedoScratch::new();
    move |key, _lsn, data| {
        if data.deltas.is_empty() {
            return data
                .image
                .map(|(_, image)| image)
                .ok_or_else(|| format!("{key:?} has no version to materialize").into());
        }
        if !key.is_page() {
            return Err(format!("{key:?} is not a page but has deltas").into());
        }
        let (page, _) = replay_with(key, &data, &mut scratch)?;
        Ok(Bytes::copy_from_slice(page.as_bytes()))
    }
}

/// Buckets of [`ReconstructMetrics::histogram`]: 0, 1, 2-3, 4-7, ..., 512-1023, 1024+.
pub const DELTA_BUCKETS: usize = 12;

/// Reads done through a [`PageReader`] and the deltas they replayed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReconstructMetrics {
    pub gets: u64,
    pub deltas_replayed: u64,
    pub max_deltas: u32,
    /// Reads by deltas replayed: bucket 0 counts reads with none, bucket `b > 0` reads
    /// with `2^(b-1) ..= 2^b - 1`, the last one everything above.
    pub histogram: [u64; DELTA_BUCKETS],
    /// Reads that replayed more deltas than the pushdown threshold.
    pub over_threshold: u64,
    /// Time in the store (finding versions) and in replay.
    pub store_nanos: u64,
    pub replay_nanos: u64,
}

impl ReconstructMetrics {
    pub fn bucket_of(deltas: u32) -> usize {
        if deltas == 0 {
            0
        } else {
            ((32 - deltas.leading_zeros()) as usize).min(DELTA_BUCKETS - 1)
        }
    }

    /// "0", "1", "2-3", ..., "1024+".
    pub fn bucket_label(bucket: usize) -> String {
        match bucket {
            0 => "0".to_string(),
            1 => "1".to_string(),
            b if b == DELTA_BUCKETS - 1 => format!("{}+", 1u32 << (b - 1)),
            b => format!("{}-{}", 1u32 << (b - 1), (1u32 << b) - 1),
        }
    }

    fn record(&mut self, stats: ReplayStats, threshold: u32, store_nanos: u64, replay_nanos: u64) {
        self.gets += 1;
        self.deltas_replayed += u64::from(stats.deltas);
        self.max_deltas = self.max_deltas.max(stats.deltas);
        self.histogram[Self::bucket_of(stats.deltas)] += 1;
        if threshold > 0 && stats.deltas > threshold {
            self.over_threshold += 1;
        }
        self.store_nanos += store_nanos;
        self.replay_nanos += replay_nanos;
    }

    /// Mean replay time per delta, in nanoseconds (0 without deltas).
    pub fn replay_nanos_per_delta(&self) -> u64 {
        self.replay_nanos
            .checked_div(self.deltas_replayed)
            .unwrap_or(0)
    }
}

impl fmt::Display for ReconstructMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} gets, {} deltas replayed (max {} per get, {} gets over the threshold), \
             store {:.1} ms, replay {:.1} ms ({} ns/delta); deltas per get:",
            self.gets,
            self.deltas_replayed,
            self.max_deltas,
            self.over_threshold,
            self.store_nanos as f64 / 1e6,
            self.replay_nanos as f64 / 1e6,
            self.replay_nanos_per_delta()
        )?;
        for (bucket, count) in self.histogram.iter().enumerate() {
            if *count > 0 {
                write!(f, " [{}]={count}", Self::bucket_label(bucket))?;
            }
        }
        Ok(())
    }
}

/// Reads pages and keeps [`ReconstructMetrics`]. Not `Sync`, like the store it reads.
pub struct PageReader {
    image_threshold_deltas: u32,
    metrics: Cell<ReconstructMetrics>,
    image_requests: RefCell<BTreeSet<Key>>,
    /// Redo's working memory, reused by every read.
    scratch: RefCell<RedoScratch>,
}

impl PageReader {
    /// A reader that flags pages whose chain exceeds `image_threshold_deltas` (0: never).
    pub fn new(image_threshold_deltas: u32) -> PageReader {
        PageReader {
            image_threshold_deltas,
            metrics: Cell::new(ReconstructMetrics::default()),
            image_requests: RefCell::new(BTreeSet::new()),
            scratch: RefCell::new(RedoScratch::new()),
        }
    }

    /// [`get_page_at_lsn`], measured.
    pub fn get_page_at_lsn(
        &self,
        store: &TimelineStore,
        key: Key,
        lsn: Lsn,
    ) -> Result<Page, ReconstructError> {
        check_exists(store, key, lsn)?;
        let start = Instant::now();
        let data = store.get(key, lsn)?;
        let fetched = Instant::now();
        let (page, stats) = match self.scratch.try_borrow_mut() {
            Ok(mut scratch) => replay_with(key, &data, &mut scratch)?,
            // Not reachable (reads do not nest); fresh memory rather than a panic.
            Err(_) => replay(key, &data)?,
        };
        let store_nanos = fetched.duration_since(start).as_nanos() as u64;
        let replay_nanos = fetched.elapsed().as_nanos() as u64;
        let mut metrics = self.metrics.get();
        metrics.record(
            stats,
            self.image_threshold_deltas,
            store_nanos,
            replay_nanos,
        );
        self.metrics.set(metrics);
        if self.image_threshold_deltas > 0 && stats.deltas > self.image_threshold_deltas {
            let mut requests = self.image_requests.borrow_mut();
            if requests.len() < MAX_PENDING_IMAGE_REQUESTS {
                requests.insert(key);
            }
        }
        Ok(page)
    }

    pub fn metrics(&self) -> ReconstructMetrics {
        self.metrics.get()
    }

    pub fn reset_metrics(&self) {
        self.metrics.set(ReconstructMetrics::default());
    }

    /// Pages read with a chain above the threshold since the last call: hand them to
    /// [`Ingester::request_image`](crate::ingest::Ingester::request_image).
    pub fn take_image_requests(&self) -> Vec<Key> {
        std::mem::take(&mut *self.image_requests.borrow_mut())
            .into_iter()
            .collect()
    }
}
