//! The read half of `tarn loadgen ingest`: GetPage@LSN in process (no TCP) on a store
//! ingested from real WAL, by the number of deltas a read replays, hot and cold, with
//! an 8 KiB `memcpy` and an 8 KiB `pread` of the store's own layer files as baselines
//! measured in the same loop.
//!
//! **Chains.** A key's versions, walked from the newest down, fall into segments: an
//! image and the deltas above it up to the next image ([`chain_segments`]). A read at
//! the image's LSN replays nothing; a read at the LSN of the segment's k-th delta
//! replays exactly k ([`lsn_replaying`]). Segments with at least the longest chain
//! length asked for are sampled (seeded), and every length is read on the same
//! segments, so the cases differ only by the deltas replayed. Every read's count is
//! checked against the reader's metrics.
//!
//! **Hot and cold.** Hot: the layer files' blocks are in the OS page cache (a warmup
//! pass reads everything first). Cold: before every measured read, every layer file of
//! the store gets `posix_fadvise(POSIX_FADV_DONTNEED)` (the files are fsynced, so their
//! pages are clean and dropped), outside the timed part. The store stays open: its
//! layer indexes (read once at open) stay in memory, as in a running pageserver; the
//! blocks a read needs come from the disk. How many bytes each read fetched from
//! storage is taken from `/proc/self/io` (`read_bytes`) to show that it was cold.

use std::fs::{self, File};
use std::hint::black_box;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tarn_pages::BLCKSZ;
use tarn_pages::reconstruct::{PageReader, ReconstructError, ReconstructMetrics};
use tarn_pages::store::{Key, KeyClass, StoreError, TimelineStore};
use tarn_wal::Lsn;
use tarn_wal::decode::{ForkNumber, RelFileNode};

use super::getpage::Rng;
use super::report::{LatencyHistogram, LatencySummary};

/// Bytes of the buffer the `memcpy` baseline copies pages out of: larger than the CPU
/// caches, so a copy reads memory as a page built from a layer block would.
pub const MEMCPY_POOL_BYTES: usize = 64 << 20;

/// Why a read benchmark failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadBenchError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("GetPage of {key:?} at {lsn}: {source}")]
    Read {
        key: Key,
        lsn: Lsn,
        source: Box<ReconstructError>,
    },
    #[error("GetPage of {key:?} at {lsn} replayed {got} deltas, {expected} expected")]
    WrongChain {
        key: Key,
        lsn: Lsn,
        expected: u32,
        got: u64,
    },
    #[error("{0}")]
    Empty(String),
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReadBenchError {
    let path = path.to_path_buf();
    move |source| ReadBenchError::Io { op, path, source }
}

/// An image of a key and the deltas above it, up to (not including) the key's next
/// image or the LSN the walk started at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSegment {
    pub key: Key,
    pub image_lsn: Lsn,
    /// Ascending.
    pub delta_lsns: Vec<Lsn>,
}

/// The LSN at which a read of `segment`'s key replays exactly `k` deltas: the image's
/// own LSN for 0, the k-th delta's LSN otherwise; `None` if the segment is shorter.
pub fn lsn_replaying(segment: &ChainSegment, k: u32) -> Option<Lsn> {
    match k {
        0 => Some(segment.image_lsn),
        k => segment.delta_lsns.get(k as usize - 1).copied(),
    }
}

/// Up to `max_segments` segments of `key`, newest first, walking down from `lsn`; the
/// walk ends at a version that is not an image (an initialising delta, or the start
/// of the key's history) or below `floor`.
pub fn chain_segments(
    store: &TimelineStore,
    key: Key,
    lsn: Lsn,
    floor: Lsn,
    max_segments: usize,
) -> Result<Vec<ChainSegment>, StoreError> {
    let mut segments = Vec::new();
    let mut at = lsn;
    while segments.len() < max_segments && at >= floor {
        let data = store.get(key, at)?;
        let Some((image_lsn, _)) = data.image else {
            break;
        };
        segments.push(ChainSegment {
            key,
            image_lsn,
            delta_lsns: data.deltas.iter().map(|(lsn, _)| *lsn).collect(),
        });
        if image_lsn.0 == 0 {
            break;
        }
        at = Lsn(image_lsn.0 - 1);
    }
    Ok(segments)
}

/// `m` distinct indices of `0..n` in random order (all of them, shuffled, if `m ≥ n`):
/// a partial Fisher-Yates shuffle, so the same seed gives the same sample.
pub fn sample_indices(n: usize, m: usize, rng: &mut Rng) -> Vec<usize> {
    let mut all: Vec<usize> = (0..n).collect();
    let m = m.min(n);
    for i in 0..m {
        let j = i + rng.below((n - i) as u64) as usize;
        all.swap(i, j);
    }
    all.truncate(m);
    all
}

/// Main-fork relation blocks with a version at or below `lsn`, ascending.
pub fn main_fork_blocks(store: &TimelineStore, lsn: Lsn) -> Vec<Key> {
    store
        .keys_at(&Key::rel_space_range(), lsn)
        .into_iter()
        .filter(|key| {
            matches!(
                key.classify(),
                KeyClass::RelBlock {
                    fork: ForkNumber::Main,
                    ..
                }
            )
        })
        .collect()
}

/// The layer files of a store, open, for page cache eviction and the `pread` baseline.
pub struct LayerFiles {
    files: Vec<(PathBuf, File, u64)>,
}

impl LayerFiles {
    /// Opens every layer file in `dir` and fsyncs it (so that its cached pages are
    /// clean and can be dropped).
    pub fn open(dir: &Path) -> Result<LayerFiles, ReadBenchError> {
        let mut files = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let entry = entry.map_err(io_error("list", dir))?;
            let path = entry.path();
            if !is_layer_file(&path) {
                continue;
            }
            let file = File::open(&path).map_err(io_error("open", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            let len = file.metadata().map_err(io_error("stat", &path))?.len();
            files.push((path, file, len));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(LayerFiles { files })
    }

    pub fn count(&self) -> usize {
        self.files.len()
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|(_, _, len)| len).sum()
    }

    /// Reads every layer file whole, so that all of their pages are in the page cache.
    pub fn warm(&self) -> Result<(), ReadBenchError> {
        let mut buf = vec![0u8; 1 << 20];
        for (path, file, len) in &self.files {
            let mut at = 0u64;
            while at < *len {
                let n = file.read_at(&mut buf, at).map_err(io_error("read", path))?;
                if n == 0 {
                    break;
                }
                at += n as u64;
            }
        }
        Ok(())
    }

    /// Drops every layer file's pages from the OS page cache.
    pub fn evict(&self) -> Result<(), ReadBenchError> {
        for (path, file, _) in &self.files {
            // SAFETY: posix_fadvise on a descriptor we own has no memory effects.
            let rc =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if rc != 0 {
                return Err(ReadBenchError::Io {
                    op: "posix_fadvise(DONTNEED)",
                    path: path.clone(),
                    source: std::io::Error::from_raw_os_error(rc),
                });
            }
        }
        Ok(())
    }

    /// A random 8 KiB-aligned page of a random layer file (weighted by size).
    fn pick_page(&self, rng: &mut Rng) -> Option<(usize, u64)> {
        let pages: u64 = self
            .files
            .iter()
            .map(|(_, _, len)| len / BLCKSZ as u64)
            .sum();
        if pages == 0 {
            return None;
        }
        let mut n = rng.below(pages);
        for (i, (_, _, len)) in self.files.iter().enumerate() {
            let here = len / BLCKSZ as u64;
            if n < here {
                return Some((i, n * BLCKSZ as u64));
            }
            n -= here;
        }
        None
    }

    fn pread(&self, file: usize, offset: u64, buf: &mut [u8]) -> Result<(), ReadBenchError> {
        let (path, file, _) = &self.files[file];
        file.read_exact_at(buf, offset)
            .map_err(io_error("pread", path))
    }
}

/// Whether a file name is a layer file's (`.delta`, `.image`, `.dense`).
pub fn is_layer_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("delta" | "image" | "dense")
    )
}

/// This process's IO counters (`/proc/self/io`); `None` where the kernel has none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcIo {
    /// Bytes passed to write(2) and friends.
    pub wchar: u64,
    /// Bytes fetched from storage (page cache misses).
    pub read_bytes: u64,
    /// Bytes sent to storage (dirtied page cache pages).
    pub write_bytes: u64,
}

impl ProcIo {
    pub fn read() -> Option<ProcIo> {
        fs::read_to_string("/proc/self/io")
            .ok()
            .and_then(|text| ProcIo::parse(&text))
    }

    pub fn parse(text: &str) -> Option<ProcIo> {
        let field = |name: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|value| value.trim().parse::<u64>().ok())
        };
        Some(ProcIo {
            wchar: field("wchar")?,
            read_bytes: field("read_bytes")?,
            write_bytes: field("write_bytes")?,
        })
    }

    /// `later - self`, field by field.
    pub fn delta(self, later: ProcIo) -> ProcIo {
        ProcIo {
            wchar: later.wchar.saturating_sub(self.wchar),
            read_bytes: later.read_bytes.saturating_sub(self.read_bytes),
            write_bytes: later.write_bytes.saturating_sub(self.write_bytes),
        }
    }
}

/// One measured case: latencies and, for cold cases, bytes fetched from storage.
#[derive(Clone, Debug, Default)]
pub struct Case {
    pub latency: LatencyHistogram,
    /// Bytes fetched from storage during the timed reads (`None`: not measured).
    pub storage_bytes: Option<u64>,
    /// For GetPage cases: layer file blocks read and layers visited by the store, in
    /// all (the size lookup that checks existence included).
    pub store_blocks: u64,
    pub store_layers: u64,
    /// For GetPage cases: the reader's split of the time (store lookup of the page's
    /// versions, replay), not counting the size lookup that checks existence.
    pub reader: Option<ReconstructMetrics>,
}

impl Case {
    pub fn summary(&self) -> LatencySummary {
        self.latency.summary()
    }

    /// Reads per second on one thread: 1 / mean latency.
    pub fn per_sec(&self) -> f64 {
        let mean = self.summary().mean_us;
        if mean > 0.0 { 1e6 / mean } else { 0.0 }
    }

    /// Layer blocks read and layers visited per GetPage.
    pub fn blocks_and_layers_per_get(&self) -> Option<(f64, f64)> {
        let count = self.latency.count();
        (self.store_layers > 0 && count > 0).then(|| {
            (
                self.store_blocks as f64 / count as f64,
                self.store_layers as f64 / count as f64,
            )
        })
    }

    /// Mean µs per read in the store and in replay, from [`Case::reader`].
    pub fn store_and_replay_us(&self) -> Option<(f64, f64)> {
        self.reader.filter(|m| m.gets > 0).map(|m| {
            let per = |nanos: u64| nanos as f64 / m.gets as f64 / 1000.0;
            (per(m.store_nanos), per(m.replay_nanos))
        })
    }

    pub fn storage_kib_per_read(&self) -> Option<f64> {
        let count = self.latency.count();
        self.storage_bytes
            .filter(|_| count > 0)
            .map(|bytes| bytes as f64 / 1024.0 / count as f64)
    }

    fn add_storage(&mut self, bytes: Option<u64>) {
        self.storage_bytes = match (self.storage_bytes, bytes) {
            (Some(a), Some(b)) => Some(a + b),
            (None, Some(b)) => Some(b),
            (_, None) => None,
        };
    }
}

/// Runs `op` (not timed: `prepare` first), records its latency and, when `io` is set,
/// the storage bytes it fetched.
fn timed<T>(
    case: &mut Case,
    io: bool,
    prepare: impl FnOnce() -> Result<(), ReadBenchError>,
    op: impl FnOnce() -> Result<T, ReadBenchError>,
) -> Result<T, ReadBenchError> {
    prepare()?;
    let before = if io { ProcIo::read() } else { None };
    let start = Instant::now();
    let out = op()?;
    let elapsed = start.elapsed();
    case.latency.record(elapsed);
    if io {
        let bytes = before
            .zip(ProcIo::read())
            .map(|(b, a)| b.delta(a).read_bytes);
        case.add_storage(bytes);
    }
    Ok(out)
}

/// The baselines' state: a pool of pages to copy out of and the layer files to pread.
pub struct Baselines<'a> {
    pool: Vec<u8>,
    page: Box<[u8; BLCKSZ]>,
    files: &'a LayerFiles,
    rng: Rng,
}

impl<'a> Baselines<'a> {
    pub fn new(files: &'a LayerFiles, seed: u64) -> Baselines<'a> {
        let mut rng = Rng::new(seed);
        let mut pool = vec![0u8; MEMCPY_POOL_BYTES];
        for chunk in pool.chunks_mut(8) {
            let bytes = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Baselines {
            pool,
            page: Box::new([0u8; BLCKSZ]),
            files,
            rng,
        }
    }

    /// One timed 8 KiB copy out of the pool.
    pub fn memcpy(&mut self, case: &mut Case) -> Result<(), ReadBenchError> {
        let pages = (self.pool.len() / BLCKSZ) as u64;
        let at = self.rng.below(pages) as usize * BLCKSZ;
        let (pool, page) = (&self.pool, &mut self.page);
        timed(
            case,
            false,
            || Ok(()),
            || {
                page.copy_from_slice(&pool[at..at + BLCKSZ]);
                black_box(&page);
                Ok(())
            },
        )
    }

    /// One timed 8 KiB pread of a random page of the layer files; with `cold`, the
    /// files are evicted from the page cache first (not timed).
    pub fn pread(&mut self, case: &mut Case, cold: bool) -> Result<(), ReadBenchError> {
        let Some((file, offset)) = self.files.pick_page(&mut self.rng) else {
            return Err(ReadBenchError::Empty(
                "the store has no layer file of 8 KiB or more".into(),
            ));
        };
        let (files, page) = (self.files, &mut self.page);
        timed(
            case,
            cold,
            || if cold { files.evict() } else { Ok(()) },
            || {
                files.pread(file, offset, &mut page[..])?;
                black_box(&page);
                Ok(())
            },
        )
    }

    /// The cost of taking the time itself (an empty timed operation).
    pub fn timer(&mut self, case: &mut Case) -> Result<(), ReadBenchError> {
        timed(case, false, || Ok(()), || Ok(()))
    }
}

/// One GetPage through `reader`, timed (eviction first when `cold`); returns the deltas
/// it replayed.
pub fn timed_get(
    store: &TimelineStore,
    reader: &PageReader,
    files: &LayerFiles,
    key: Key,
    lsn: Lsn,
    case: &mut Case,
    cold: bool,
) -> Result<u64, ReadBenchError> {
    let before = reader.metrics().deltas_replayed;
    let store_before = store.metrics();
    timed(
        case,
        cold,
        || if cold { files.evict() } else { Ok(()) },
        || {
            let page =
                reader
                    .get_page_at_lsn(store, key, lsn)
                    .map_err(|source| ReadBenchError::Read {
                        key,
                        lsn,
                        source: Box::new(source),
                    })?;
            black_box(&page);
            Ok(())
        },
    )?;
    let store_after = store.metrics();
    case.store_blocks += store_after.blocks_read - store_before.blocks_read;
    case.store_layers += store_after.layers_visited - store_before.layers_visited;
    Ok(reader.metrics().deltas_replayed - before)
}

/// What [`run_chain_bench`] needs.
#[derive(Clone, Debug)]
pub struct ChainBenchOptions {
    /// Deltas replayed per case, e.g. 0, 4, 16.
    pub lengths: Vec<u32>,
    /// Segments sampled (each read at every length).
    pub samples: usize,
    /// Segments taken per key at most (so that a few hot pages do not make the sample).
    pub max_segments_per_key: usize,
    pub hot_passes: usize,
    /// Cold reads per length.
    pub cold_reads: usize,
    pub seed: u64,
    /// Versions below it (the base import) are not walked.
    pub floor: Lsn,
    /// The reader's image threshold (it only flags pages; reads are unchanged).
    pub reader_threshold: u32,
    /// Names of relations, for the report.
    pub names: Vec<(String, RelFileNode)>,
}

/// GetPage latency by deltas replayed, hot and cold, with baselines.
#[derive(Clone, Debug, Default)]
pub struct ChainBenchReport {
    pub keys_walked: usize,
    pub segments_found: usize,
    pub eligible_segments: usize,
    /// Long enough, but of a block that does not exist at one of the LSNs to read.
    pub segments_of_missing_blocks: usize,
    pub sampled_segments: usize,
    pub distinct_keys: usize,
    /// Sampled segments per relation (`spc/db/rel`), most first.
    pub by_relation: Vec<(String, usize)>,
    pub layer_files: usize,
    pub layer_bytes: u64,
    pub hot_passes: usize,
    /// `(length, hot, cold)`.
    pub gets: Vec<(u32, Case, Case)>,
    pub hot_memcpy: Case,
    pub hot_pread: Case,
    pub cold_pread: Case,
    pub timer: Case,
}

/// Finds chain segments in `store` at its last LSN, samples them and measures.
pub fn run_chain_bench(
    store: &TimelineStore,
    dir: &Path,
    options: &ChainBenchOptions,
) -> Result<ChainBenchReport, ReadBenchError> {
    let longest = options.lengths.iter().copied().max().unwrap_or(0);
    let lsn = store.last_lsn();
    let keys = main_fork_blocks(store, lsn);
    let mut report = ChainBenchReport {
        keys_walked: keys.len(),
        hot_passes: options.hot_passes,
        ..ChainBenchReport::default()
    };
    let mut eligible = Vec::new();
    for key in keys {
        for segment in chain_segments(store, key, lsn, options.floor, options.max_segments_per_key)?
        {
            report.segments_found += 1;
            if segment.delta_lsns.len() >= longest as usize {
                eligible.push(segment);
            }
        }
    }
    // A block read where it does not exist (its relation dropped or truncated there)
    // is an error, not a page: such segments are left out.
    let before = eligible.len();
    eligible.retain(|segment| {
        options.lengths.iter().all(|&k| {
            lsn_replaying(segment, k).is_some_and(|lsn| block_exists(store, segment.key, lsn))
        })
    });
    report.segments_of_missing_blocks = before - eligible.len();
    report.eligible_segments = eligible.len();
    let mut rng = Rng::new(options.seed);
    let sample: Vec<ChainSegment> = sample_indices(eligible.len(), options.samples, &mut rng)
        .into_iter()
        .map(|i| eligible[i].clone())
        .collect();
    if sample.is_empty() {
        return Err(ReadBenchError::Empty(format!(
            "no image with {longest} or more deltas above it among {} segments: \
             raise the chain threshold or the workload",
            report.segments_found
        )));
    }
    report.sampled_segments = sample.len();
    let mut keys: Vec<Key> = sample.iter().map(|s| s.key).collect();
    keys.sort();
    keys.dedup();
    report.distinct_keys = keys.len();
    let mut by_relation = std::collections::BTreeMap::<String, usize>::new();
    for segment in &sample {
        if let Some((rel, _)) = segment.key.rel() {
            let name = options.names.iter().find(|(_, r)| *r == rel).map_or_else(
                || format!("{}/{}/{}", rel.spc_node, rel.db_node, rel.rel_node),
                |(name, _)| name.clone(),
            );
            *by_relation.entry(name).or_default() += 1;
        }
    }
    report.by_relation = by_relation.into_iter().collect();
    report
        .by_relation
        .sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));

    // (length, pairs) with every pair's LSN replaying exactly `length`.
    let cases: Vec<(u32, Vec<(Key, Lsn)>)> = options
        .lengths
        .iter()
        .map(|&k| {
            let pairs = sample
                .iter()
                .filter_map(|s| lsn_replaying(s, k).map(|lsn| (s.key, lsn)))
                .collect();
            (k, pairs)
        })
        .collect();

    let files = LayerFiles::open(dir)?;
    report.layer_files = files.count();
    report.layer_bytes = files.total_bytes();
    // One reader per case and temperature, so that each keeps its own time split.
    let reader = PageReader::new(options.reader_threshold);
    let hot_readers: Vec<PageReader> = cases
        .iter()
        .map(|_| PageReader::new(options.reader_threshold))
        .collect();
    let cold_readers: Vec<PageReader> = cases
        .iter()
        .map(|_| PageReader::new(options.reader_threshold))
        .collect();
    let mut baselines = Baselines::new(&files, options.seed ^ 0x5EED);
    let mut hot: Vec<Case> = vec![Case::default(); cases.len()];
    let mut cold: Vec<Case> = vec![Case::default(); cases.len()];
    let check = |key: Key, lsn: Lsn, expected: u32, got: u64| {
        if got == u64::from(expected) {
            Ok(())
        } else {
            Err(ReadBenchError::WrongChain {
                key,
                lsn,
                expected,
                got,
            })
        }
    };

    // Warmup (not measured): the files whole (the pread baseline reads anywhere in
    // them), then every pair once, checked.
    files.warm()?;
    let mut scratch = Case::default();
    for (k, pairs) in &cases {
        for &(key, lsn) in pairs {
            let got = timed_get(store, &reader, &files, key, lsn, &mut scratch, false)?;
            check(key, lsn, *k, got)?;
        }
    }
    for _ in 0..pairs_len(&cases) {
        baselines.memcpy(&mut scratch)?;
        baselines.pread(&mut scratch, false)?;
    }

    // Hot: every pass reads every case's pairs in a fresh order, then as many memcpys
    // and preads; the order of the groups rotates from pass to pass.
    let groups = cases.len() + 3;
    for pass in 0..options.hot_passes {
        for g in 0..groups {
            let group = (g + pass) % groups;
            if group < cases.len() {
                let (k, pairs) = &cases[group];
                for i in sample_indices(pairs.len(), pairs.len(), &mut rng) {
                    let (key, lsn) = pairs[i];
                    let got = timed_get(
                        store,
                        &hot_readers[group],
                        &files,
                        key,
                        lsn,
                        &mut hot[group],
                        false,
                    )?;
                    check(key, lsn, *k, got)?;
                }
            } else {
                for _ in 0..pairs_len(&cases) {
                    match group - cases.len() {
                        0 => baselines.memcpy(&mut report.hot_memcpy)?,
                        1 => baselines.pread(&mut report.hot_pread, false)?,
                        _ => baselines.timer(&mut report.timer)?,
                    }
                }
            }
        }
    }

    // Cold: round robin over the cases and a cold pread, each after an eviction.
    for i in 0..options.cold_reads {
        for (c, (k, pairs)) in cases.iter().enumerate() {
            let (key, lsn) = pairs[i % pairs.len()];
            let got = timed_get(
                store,
                &cold_readers[c],
                &files,
                key,
                lsn,
                &mut cold[c],
                true,
            )?;
            check(key, lsn, *k, got)?;
        }
        baselines.pread(&mut report.cold_pread, true)?;
    }

    for (case, reader) in hot.iter_mut().zip(&hot_readers) {
        case.reader = Some(reader.metrics());
    }
    for (case, reader) in cold.iter_mut().zip(&cold_readers) {
        case.reader = Some(reader.metrics());
    }
    report.gets = cases
        .iter()
        .zip(hot.into_iter().zip(cold))
        .map(|((k, _), (h, c))| (*k, h, c))
        .collect();
    Ok(report)
}

/// Whether `key` (a relation block) exists at `lsn`: its fork has a size above it.
fn block_exists(store: &TimelineStore, key: Key, lsn: Lsn) -> bool {
    match key.classify() {
        KeyClass::RelBlock { rel, fork, blk } => {
            tarn_pages::reconstruct::get_rel_size(store, rel, fork, lsn)
                .is_ok_and(|nblocks| blk < nblocks)
        }
        _ => false,
    }
}

fn pairs_len(cases: &[(u32, Vec<(Key, Lsn)>)]) -> usize {
    cases.first().map_or(0, |(_, pairs)| pairs.len())
}

/// GetPage at one LSN of sampled blocks of one relation.
#[derive(Clone, Debug, Default)]
pub struct RelReads {
    pub name: String,
    pub nblocks: u32,
    pub reads: usize,
    pub hot: Case,
    pub cold: Case,
    /// Deltas each sampled read replayed (from the warmup pass).
    pub deltas: Vec<u64>,
}

/// Per-relation options of [`read_sampled_blocks`].
#[derive(Clone, Copy, Debug)]
pub struct SampleOptions {
    pub blocks: usize,
    pub passes: usize,
    pub cold_blocks: usize,
    pub seed: u64,
    pub reader_threshold: u32,
}

/// Reads per block at most in [`read_sampled_blocks`]: a relation of a few blocks
/// (pgbench_branches) is not read thousands of times, which with pushdown off can
/// mean thousands of deltas per read.
pub const MAX_READS_PER_BLOCK: usize = 16;

/// Reads `blocks` blocks of `rel` drawn uniformly (seeded, with replacement; at most
/// [`MAX_READS_PER_BLOCK`] × the relation's size) at `lsn`: a warmup pass that records
/// the deltas replayed, `passes` hot passes, then the first `cold_blocks` of them
/// cold.
pub fn read_sampled_blocks(
    store: &TimelineStore,
    files: &LayerFiles,
    name: &str,
    rel: RelFileNode,
    lsn: Lsn,
    options: &SampleOptions,
) -> Result<RelReads, ReadBenchError> {
    let nblocks = tarn_pages::reconstruct::get_rel_size(store, rel, ForkNumber::Main, lsn)
        .map_err(|source| ReadBenchError::Read {
            key: Key::rel_size(rel, ForkNumber::Main),
            lsn,
            source: Box::new(source),
        })?;
    let mut out = RelReads {
        name: name.to_string(),
        nblocks,
        ..RelReads::default()
    };
    if nblocks == 0 {
        return Ok(out);
    }
    let mut rng = Rng::new(options.seed);
    let reads = options
        .blocks
        .min((nblocks as usize).saturating_mul(MAX_READS_PER_BLOCK));
    let keys: Vec<Key> = (0..reads)
        .map(|_| Key::rel_block(rel, ForkNumber::Main, rng.below(u64::from(nblocks)) as u32))
        .collect();
    out.reads = keys.len();
    let reader = PageReader::new(options.reader_threshold);
    let mut scratch = Case::default();
    for &key in &keys {
        let deltas = timed_get(store, &reader, files, key, lsn, &mut scratch, false)?;
        out.deltas.push(deltas);
    }
    for _ in 0..options.passes {
        for &key in &keys {
            timed_get(store, &reader, files, key, lsn, &mut out.hot, false)?;
        }
    }
    for &key in keys.iter().take(options.cold_blocks) {
        timed_get(store, &reader, files, key, lsn, &mut out.cold, true)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tarn_pages::store::{StoreConfig, Value};

    const REL: RelFileNode = RelFileNode {
        spc_node: 1663,
        db_node: 5,
        rel_node: 16384,
    };

    fn segment(image: u64, deltas: &[u64]) -> ChainSegment {
        ChainSegment {
            key: Key::rel_block(REL, ForkNumber::Main, 0),
            image_lsn: Lsn(image),
            delta_lsns: deltas.iter().map(|&d| Lsn(d)).collect(),
        }
    }

    #[test]
    fn lsn_replaying_picks_the_image_or_the_kth_delta() {
        let s = segment(100, &[110, 120, 130, 140]);
        assert_eq!(lsn_replaying(&s, 0), Some(Lsn(100)));
        assert_eq!(lsn_replaying(&s, 1), Some(Lsn(110)));
        assert_eq!(lsn_replaying(&s, 4), Some(Lsn(140)));
        assert_eq!(lsn_replaying(&s, 5), None);
    }

    #[test]
    fn sample_indices_is_seeded_distinct_and_bounded() {
        let a = sample_indices(100, 10, &mut Rng::new(7));
        let b = sample_indices(100, 10, &mut Rng::new(7));
        assert_eq!(a, b);
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
        assert!(a.iter().all(|&i| i < 100));
        let mut all = sample_indices(5, 50, &mut Rng::new(1));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(sample_indices(0, 3, &mut Rng::new(1)).is_empty());
    }

    #[test]
    fn proc_io_parses_the_kernel_format() {
        let text = "rchar: 6976\nwchar: 12\nsyscr: 10\nsyscw: 0\nread_bytes: 4096\n\
                    write_bytes: 8192\ncancelled_write_bytes: 0\n";
        let io = ProcIo::parse(text).expect("parses");
        assert_eq!(
            io,
            ProcIo {
                wchar: 12,
                read_bytes: 4096,
                write_bytes: 8192
            }
        );
        assert_eq!(ProcIo::parse("rchar: 1\n"), None);
    }

    /// Values are opaque to the store, so chains can be laid out by hand.
    #[test]
    fn chain_segments_walk_images_newest_first() {
        let dir = std::env::temp_dir().join(format!(
            "tarn-tools-chains-{}-{}",
            std::process::id(),
            line!()
        ));
        let _ = fs::remove_dir_all(&dir);
        let mut store =
            TimelineStore::create(&dir, Lsn(0), StoreConfig::default()).expect("create store");
        let key = Key::rel_block(REL, ForkNumber::Main, 3);
        let image = || Value::Image(vec![1u8; 16].into());
        let delta = |will_init| Value::Delta {
            will_init,
            record: vec![2u8; 4].into(),
        };
        // will_init at 1, deltas 2..=4; image at 10, deltas 11..=15; image at 20, delta 21.
        store.put(key, Lsn(1), delta(true)).expect("put");
        for lsn in 2..=4 {
            store.put(key, Lsn(lsn), delta(false)).expect("put");
        }
        store.put(key, Lsn(10), image()).expect("put");
        for lsn in 11..=15 {
            store.put(key, Lsn(lsn), delta(false)).expect("put");
        }
        store.put(key, Lsn(20), image()).expect("put");
        store.put(key, Lsn(21), delta(false)).expect("put");
        store.freeze(Lsn(30)).expect("freeze");
        store.flush().expect("flush");

        let segments = chain_segments(&store, key, Lsn(30), Lsn(1), 10).expect("walk");
        assert_eq!(
            segments,
            vec![
                ChainSegment {
                    key,
                    image_lsn: Lsn(20),
                    delta_lsns: vec![Lsn(21)]
                },
                ChainSegment {
                    key,
                    image_lsn: Lsn(10),
                    delta_lsns: (11..=15).map(Lsn).collect()
                },
            ]
        );
        // Bounded by max_segments, and by the floor.
        assert_eq!(
            chain_segments(&store, key, Lsn(30), Lsn(1), 1)
                .expect("walk")
                .len(),
            1
        );
        assert_eq!(
            chain_segments(&store, key, Lsn(30), Lsn(25), 10)
                .expect("walk")
                .len(),
            1
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
