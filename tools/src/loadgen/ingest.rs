//! `tarn loadgen ingest`: the pageserver's ingest and GetPage@LSN measured in process
//! on a real PostgreSQL 15 WAL, each against a baseline run side by side in the same
//! process (`benches/ingest.sh` makes the WAL and runs it).
//!
//! Input: a cleanly shut down data directory (the base, imported as the pageserver
//! does, at its checkpoint LSN), its `pg_controldata` output, and a `pg_wal` directory
//! holding every record from that checkpoint on.
//!
//! For every pushdown threshold asked for, on one thread, in this order:
//! 1. **Baselines**: the WAL read from the segment files (`pread`, no checks), read and
//!    framed (page headers, CRC, record assembly: `WalRecordReader`), and read, framed
//!    and decoded — no store. Each runs just before and just after the ingest; the
//!    faster of the two passes is kept (so ratios against them err against tarn).
//! 2. **Ingest** of the same WAL into a fresh [`TimelineStore`] seeded with the base:
//!    every record through [`Ingester::ingest`]; the open layer is frozen, flushed and
//!    compacted whenever it holds more than `flush_at_bytes` (the pageserver's
//!    [`DEFAULT_FLUSH_AT_BYTES`]), and once at the end. The threshold applies to both image
//!    mechanisms: the ingester's pushdown and compaction's sparse images ("off":
//!    neither; compaction's dense image layers are unchanged). Bytes written are the
//!    sizes of every layer file that appeared after each flush and each compaction
//!    (L0 files compaction later removes included), and this process's `write()`
//!    bytes and storage writes from `/proc/self/io`.
//! 3. **GetPage at the latest LSN** of seeded random blocks of the given relations,
//!    hot and cold, with the deltas each read replayed
//!    ([`super::ingest_reads::read_sampled_blocks`]).
//!
//! On the store of the chain threshold, GetPage by chain length
//! ([`super::ingest_reads::run_chain_bench`]).
//!
//! Rates are MiB of WAL (the LSN span, page headers included) per second of wall
//! time, and per second of this thread's CPU time (flushes wait for fsync off CPU).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tarn_pages::RedoSettings;
use tarn_pages::ingest::import::{ImportError, ImportReport, import_data_dir};
use tarn_pages::ingest::{IngestConfig, IngestError, IngestStats, Ingester};
use tarn_pages::reconstruct::{DELTA_BUCKETS, ReconstructMetrics, materializer};
use tarn_pages::store::{StoreConfig, StoreError, TimelineStore};
use tarn_wal::decode::{PgWalDir, RelFileNode, WalReadError, WalRecordReader};
use tarn_wal::format::{ScanStop, WalRead, WalStreamParams};
use tarn_wal::{Lsn, SystemId};

use super::ingest_reads::{
    Case, ChainBenchOptions, ChainBenchReport, LayerFiles, ProcIo, ReadBenchError, RelReads,
    SampleOptions, is_layer_file, read_sampled_blocks, run_chain_bench,
};

const MIB: f64 = (1u64 << 20) as f64;
/// Default of [`IngestBenchOptions::flush_at_bytes`]: the pageserver's `FLUSH_AT_BYTES`
/// (`pages/src/service`), the open layer size at which it freezes and flushes.
pub const DEFAULT_FLUSH_AT_BYTES: usize = 32 << 20;
/// Bytes read from the segment files at a time by the raw read baseline (what
/// `WalRecordReader` asks for).
const RAW_READ_BYTES: usize = tarn_wal::decode::READ_CHUNK_BYTES;

/// An image pushdown threshold: at most this many deltas above a page's image, or off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threshold {
    Deltas(u32),
    Off,
}

impl Threshold {
    /// `off` or a positive number of deltas.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        match text.trim() {
            "off" => Ok(Threshold::Off),
            n => match n.parse::<u32>() {
                Ok(0) | Err(_) => Err(format!(
                    "threshold {n:?} is neither a positive number of deltas nor \"off\""
                )),
                Ok(n) => Ok(Threshold::Deltas(n)),
            },
        }
    }

    /// [`IngestConfig::image_threshold_deltas`] (0 disables pushdown).
    pub fn ingest_deltas(self) -> u32 {
        match self {
            Threshold::Deltas(n) => n,
            Threshold::Off => 0,
        }
    }

    /// [`StoreConfig::image_threshold_deltas`] (compaction's sparse images).
    pub fn store_deltas(self) -> u32 {
        match self {
            Threshold::Deltas(n) => n,
            Threshold::Off => u32::MAX,
        }
    }

    pub fn label(self) -> String {
        match self {
            Threshold::Deltas(n) => n.to_string(),
            Threshold::Off => "off".to_string(),
        }
    }
}

/// `NAME=SPC/DB/REL`.
pub fn parse_named_rel(text: &str) -> Result<(String, RelFileNode), String> {
    let (name, rel) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=SPC/DB/REL"))?;
    let oids = rel
        .split('/')
        .map(|part| part.parse::<u32>())
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| format!("{rel:?} is not SPC/DB/REL (three oids)"))?;
    match oids[..] {
        [spc_node, db_node, rel_node] => Ok((
            name.to_string(),
            RelFileNode {
                spc_node,
                db_node,
                rel_node,
            },
        )),
        _ => Err(format!("{rel:?} is not SPC/DB/REL (three oids)")),
    }
}

/// What the base data directory's `pg_controldata` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseInfo {
    /// "Latest checkpoint location": the shutdown checkpoint record, where ingest starts.
    pub lsn: Lsn,
    pub timeline: u32,
    pub params: WalStreamParams,
    pub settings: RedoSettings,
}

/// Parses `pg_controldata` output (C locale) of a cleanly shut down data directory.
pub fn parse_controldata(text: &str) -> Result<BaseInfo, String> {
    let field = |name: &str| -> Result<&str, String> {
        text.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == name).then(|| value.trim())
            })
            .ok_or_else(|| format!("no {name:?} line"))
    };
    let number = |name: &str| -> Result<u64, String> {
        let value = field(name)?;
        value
            .parse::<u64>()
            .map_err(|_| format!("{name} {value:?} is not a number"))
    };
    let lsn = |name: &str| -> Result<Lsn, String> {
        let value = field(name)?;
        value
            .parse::<Lsn>()
            .map_err(|_| format!("{name} {value:?} is not an LSN"))
    };
    let state = field("Database cluster state")?;
    if state != "shut down" {
        return Err(format!(
            "the cluster state is {state:?}, not \"shut down\": its files may be torn"
        ));
    }
    let checkpoint = lsn("Latest checkpoint location")?;
    let redo = lsn("Latest checkpoint's REDO location")?;
    if checkpoint != redo || checkpoint == Lsn::INVALID {
        return Err(format!(
            "the checkpoint at {checkpoint} has its REDO at {redo}: not a shutdown checkpoint"
        ));
    }
    let timeline = u32::try_from(number("Latest checkpoint's TimeLineID")?)
        .map_err(|_| "the timeline does not fit 32 bits".to_string())?;
    let params = WalStreamParams::new(
        number("Bytes per WAL segment")?,
        Some(SystemId(number("Database system identifier")?)),
    )
    .map_err(|e| e.to_string())?;
    Ok(BaseInfo {
        lsn: checkpoint,
        timeline,
        params,
        settings: RedoSettings {
            data_checksums: field("Data page checksum version")? != "0",
            wal_log_hints: field("wal_log_hints setting")? == "on",
        },
    })
}

#[derive(Clone, Debug)]
pub struct IngestBenchOptions {
    /// The base: a cleanly shut down data directory.
    pub base_datadir: PathBuf,
    /// `pg_controldata` output of the base.
    pub controldata: PathBuf,
    /// Postgres's `pg_wal` directory, holding every record from the base's checkpoint.
    pub wal_dir: PathBuf,
    /// If given, the last record must start here (the final shutdown checkpoint).
    pub end_lsn: Option<Lsn>,
    /// Stores are created here (one per threshold, removed after use unless kept).
    pub work_dir: PathBuf,
    /// Relations whose blocks are read at the latest LSN, by name.
    pub rels: Vec<(String, RelFileNode)>,
    pub thresholds: Vec<Threshold>,
    /// The threshold of the store GetPage by chain length is measured on.
    pub chain_threshold: Threshold,
    pub chain_lengths: Vec<u32>,
    pub chain_samples: usize,
    pub max_segments_per_key: usize,
    pub hot_passes: usize,
    pub cold_reads: usize,
    /// Blocks drawn per relation for the threshold sweep.
    pub sample_blocks: usize,
    pub sweep_passes: usize,
    pub cold_sample: usize,
    pub flush_at_bytes: usize,
    pub seed: u64,
    pub keep_stores: bool,
}

impl Default for IngestBenchOptions {
    fn default() -> Self {
        IngestBenchOptions {
            base_datadir: PathBuf::new(),
            controldata: PathBuf::new(),
            wal_dir: PathBuf::new(),
            end_lsn: None,
            work_dir: PathBuf::new(),
            rels: Vec::new(),
            thresholds: vec![
                Threshold::Deltas(4),
                Threshold::Deltas(16),
                Threshold::Deltas(64),
                Threshold::Off,
            ],
            chain_threshold: Threshold::Deltas(64),
            chain_lengths: vec![0, 4, 16],
            chain_samples: 300,
            max_segments_per_key: 4,
            hot_passes: 20,
            cold_reads: 200,
            sample_blocks: 2000,
            sweep_passes: 3,
            cold_sample: 200,
            flush_at_bytes: DEFAULT_FLUSH_AT_BYTES,
            seed: 1,
            keep_stores: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestBenchError {
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("{}: {detail}", path.display())]
    Controldata { path: PathBuf, detail: String },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading WAL: {0}")]
    WalRead(#[from] WalReadError),
    #[error("WAL in {}: {detail}", dir.display())]
    Wal { dir: PathBuf, detail: String },
    #[error("ingesting the record at {lsn}: {source}")]
    Ingest { lsn: Lsn, source: Box<IngestError> },
    #[error("importing the base data directory: {0}")]
    Import(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Read(#[from] ReadBenchError),
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IngestBenchError {
    let path = path.to_path_buf();
    move |source| IngestBenchError::Io { op, path, source }
}

/// Wall and thread CPU time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Times {
    pub wall: Duration,
    pub cpu: Duration,
}

impl Times {
    fn add(&mut self, other: Times) {
        self.wall += other.wall;
        self.cpu += other.cpu;
    }
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: thread_cpu(),
        }
    }

    fn stop(&self) -> Times {
        Times {
            wall: self.wall.elapsed(),
            cpu: thread_cpu().saturating_sub(self.cpu),
        }
    }
}

/// One pass over the WAL.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Pass {
    pub times: Times,
    /// The LSN span read.
    pub bytes: u64,
    pub records: u64,
}

impl Pass {
    pub fn mib_per_sec(&self) -> f64 {
        rate(self.bytes as f64 / MIB, self.times.wall)
    }

    pub fn mib_per_cpu_sec(&self) -> f64 {
        rate(self.bytes as f64 / MIB, self.times.cpu)
    }

    pub fn records_per_sec(&self) -> f64 {
        rate(self.records as f64, self.times.wall)
    }
}

fn rate(amount: f64, time: Duration) -> f64 {
    let secs = time.as_secs_f64();
    if secs > 0.0 { amount / secs } else { 0.0 }
}

/// The WAL from the base on, as found by a first read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalExtent {
    pub start: Lsn,
    /// End of the last record.
    pub end: Lsn,
    pub last_record: Lsn,
    pub records: u64,
    /// Record bytes (headers included, page headers not).
    pub record_bytes: u64,
}

/// Sums of the compactions of one ingest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactionTotals {
    pub runs: u32,
    pub l0_layers_merged: usize,
    pub images_written: usize,
    pub images_materialized: usize,
    pub bytes_written: u64,
}

/// One threshold's ingest and reads.
#[derive(Clone, Debug, Default)]
pub struct IngestRun {
    pub label: String,
    /// Part of the sweep (else run only for the chain measurement).
    pub in_sweep: bool,
    pub raw: Pass,
    pub frame: Pass,
    pub decode: Pass,
    pub ingest: Pass,
    /// Time in freeze, flush and compaction (inside `ingest`).
    pub flush_compact: Times,
    pub flushes: u32,
    pub compaction: CompactionTotals,
    pub stats: IngestStats,
    /// Bytes of the layer files each flush wrote.
    pub flushed_bytes: u64,
    /// Bytes of the layer files compactions wrote.
    pub compaction_file_bytes: u64,
    pub final_store_bytes: u64,
    pub final_layers: usize,
    /// This process's IO during the ingest.
    pub io: Option<ProcIo>,
    pub latest_lsn: Lsn,
    pub reads: Vec<RelReads>,
    pub chain: Option<ChainBenchReport>,
}

impl IngestRun {
    pub fn layer_bytes_written(&self) -> u64 {
        self.flushed_bytes + self.compaction_file_bytes
    }
}

/// The result of `tarn loadgen ingest`.
#[derive(Clone, Debug, Default)]
pub struct IngestBenchReport {
    pub base: Option<BaseInfo>,
    pub base_dir: PathBuf,
    pub wal: WalExtent,
    pub import: ImportReport,
    /// Layer bytes the import flush wrote (not counted in the runs).
    pub import_bytes: u64,
    pub flush_at_bytes: usize,
    pub rels: Vec<(String, RelFileNode)>,
    pub chain_threshold: String,
    pub runs: Vec<IngestRun>,
}

fn validate(o: &IngestBenchOptions) -> Result<(), IngestBenchError> {
    let bad = |m: &str| Err(IngestBenchError::InvalidOption(m.to_string()));
    if o.thresholds.is_empty() {
        return bad("--thresholds is empty");
    }
    if o.chain_lengths.is_empty() {
        return bad("--chain-lengths is empty");
    }
    if o.thresholds
        .iter()
        .enumerate()
        .any(|(i, t)| o.thresholds[..i].contains(t))
    {
        return bad("--thresholds lists a threshold twice");
    }
    if o.chain_samples == 0 || o.max_segments_per_key == 0 {
        return bad("--chain-samples and --max-segments-per-key must be positive");
    }
    if o.hot_passes == 0 || o.sweep_passes == 0 {
        return bad("--hot-passes and --sweep-passes must be positive");
    }
    if o.flush_at_bytes == 0 {
        return bad("--flush-at-bytes must be positive");
    }
    Ok(())
}

/// Runs every measurement; see the module docs.
pub fn run(options: &IngestBenchOptions) -> Result<IngestBenchReport, IngestBenchError> {
    validate(options)?;
    let mut options = options.clone();
    options.chain_lengths.sort_unstable();
    options.chain_lengths.dedup();
    let options = &options;
    let text =
        fs::read_to_string(&options.controldata).map_err(io_error("read", &options.controldata))?;
    let base = parse_controldata(&text).map_err(|detail| IngestBenchError::Controldata {
        path: options.controldata.clone(),
        detail,
    })?;
    let wal = scan_wal(options, &base)?;
    fs::create_dir_all(&options.work_dir).map_err(io_error("create", &options.work_dir))?;
    let mut report = IngestBenchReport {
        base: Some(base),
        base_dir: options.base_datadir.clone(),
        wal,
        flush_at_bytes: options.flush_at_bytes,
        rels: options.rels.clone(),
        chain_threshold: options.chain_threshold.label(),
        ..IngestBenchReport::default()
    };
    let mut plan: Vec<(Threshold, bool)> = options.thresholds.iter().map(|t| (*t, true)).collect();
    if !options.thresholds.contains(&options.chain_threshold) {
        plan.push((options.chain_threshold, false));
    }
    let mut chain_done = false;
    for (threshold, in_sweep) in plan {
        let dir = options
            .work_dir
            .join(format!("store-{}", threshold.label()));
        let (mut run, store) = ingest_run(options, &base, &wal, threshold, &dir, &mut report)?;
        run.in_sweep = in_sweep;
        let files = LayerFiles::open(&dir)?;
        if in_sweep {
            for (i, (name, rel)) in options.rels.iter().enumerate() {
                let sample = SampleOptions {
                    blocks: options.sample_blocks,
                    passes: options.sweep_passes,
                    cold_blocks: options.cold_sample,
                    seed: options.seed.wrapping_add(i as u64 + 1),
                    reader_threshold: threshold.ingest_deltas(),
                };
                run.reads.push(read_sampled_blocks(
                    &store,
                    &files,
                    name,
                    *rel,
                    run.latest_lsn,
                    &sample,
                )?);
            }
        }
        if threshold == options.chain_threshold && !chain_done {
            let chain = ChainBenchOptions {
                lengths: options.chain_lengths.clone(),
                samples: options.chain_samples,
                max_segments_per_key: options.max_segments_per_key,
                hot_passes: options.hot_passes,
                cold_reads: options.cold_reads,
                seed: options.seed,
                floor: base.lsn,
                reader_threshold: threshold.ingest_deltas(),
                names: options.rels.clone(),
            };
            run.chain = Some(run_chain_bench(&store, &dir, &chain)?);
            chain_done = true;
        }
        drop(files);
        drop(store);
        if !options.keep_stores {
            fs::remove_dir_all(&dir).map_err(io_error("remove", &dir))?;
        }
        report.runs.push(run);
    }
    Ok(report)
}

fn wal_reader(
    options: &IngestBenchOptions,
    base: &BaseInfo,
) -> Result<WalRecordReader<PgWalDir>, IngestBenchError> {
    Ok(WalRecordReader::new(
        PgWalDir::new(
            &options.wal_dir,
            base.timeline,
            base.params.segment_size_bytes,
        ),
        base.lsn,
        None,
        base.params,
    )?)
}

/// Reads (and decodes) the WAL once to find where it ends; checks the end against
/// `end_lsn`.
fn scan_wal(options: &IngestBenchOptions, base: &BaseInfo) -> Result<WalExtent, IngestBenchError> {
    let mut reader = wal_reader(options, base)?;
    let mut extent = WalExtent {
        start: base.lsn,
        end: base.lsn,
        ..WalExtent::default()
    };
    while let Some(record) = reader.next_raw_record()? {
        black_box(record.decode().map_err(WalReadError::from)?);
        extent.records += 1;
        extent.record_bytes += record.bytes.len() as u64;
        extent.last_record = record.lsn;
        extent.end = record.end_lsn;
    }
    let wal_error = |detail: String| IngestBenchError::Wal {
        dir: options.wal_dir.clone(),
        detail,
    };
    match reader.stop() {
        Some(ScanStop::Invalid(_) | ScanStop::EndOfStorage) => {}
        other => return Err(wal_error(format!("reading stopped by {other:?}"))),
    }
    if extent.records == 0 {
        return Err(wal_error(format!("no record at {}", base.lsn)));
    }
    if let Some(end) = options.end_lsn
        && extent.last_record != end
    {
        return Err(wal_error(format!(
            "the last record read starts at {}, not at --end-lsn {end} ({:?})",
            extent.last_record,
            reader.stop()
        )));
    }
    Ok(extent)
}

/// The segment files' bytes of the extent, `pread` in chunks, nothing checked.
fn raw_pass(
    options: &IngestBenchOptions,
    base: &BaseInfo,
    wal: &WalExtent,
) -> Result<Pass, IngestBenchError> {
    let mut source = PgWalDir::new(
        &options.wal_dir,
        base.timeline,
        base.params.segment_size_bytes,
    );
    let mut buf = vec![0u8; RAW_READ_BYTES];
    let segment = base.params.segment_size_bytes;
    let watch = Stopwatch::start();
    let mut at = wal.start;
    while at < wal.end {
        let want = (RAW_READ_BYTES as u64)
            .min(wal.end.0 - at.0)
            .min(segment - at.segment_offset(segment)) as usize;
        let got = source
            .read_wal(at, &mut buf[..want])
            .map_err(io_error("read WAL from", &options.wal_dir))?;
        if got == 0 {
            return Err(IngestBenchError::Wal {
                dir: options.wal_dir.clone(),
                detail: format!("no bytes at {at}"),
            });
        }
        black_box(&buf[..got]);
        at = at.plus(got as u64);
    }
    Ok(Pass {
        times: watch.stop(),
        bytes: wal.end.0 - wal.start.0,
        records: 0,
    })
}

/// The extent's records read and framed, and decoded if `decode`.
fn frame_pass(
    options: &IngestBenchOptions,
    base: &BaseInfo,
    wal: &WalExtent,
    decode: bool,
) -> Result<Pass, IngestBenchError> {
    let mut reader = wal_reader(options, base)?.with_limit(wal.end);
    let mut records = 0u64;
    let watch = Stopwatch::start();
    while let Some(record) = reader.next_raw_record()? {
        if decode {
            black_box(record.decode().map_err(WalReadError::from)?);
        } else {
            black_box(&record);
        }
        records += 1;
    }
    let times = watch.stop();
    check_records(options, wal, records)?;
    Ok(Pass {
        times,
        bytes: wal.end.0 - wal.start.0,
        records,
    })
}

fn check_records(
    options: &IngestBenchOptions,
    wal: &WalExtent,
    records: u64,
) -> Result<(), IngestBenchError> {
    if records == wal.records {
        return Ok(());
    }
    Err(IngestBenchError::Wal {
        dir: options.wal_dir.clone(),
        detail: format!(
            "a pass read {records} records, the first read {}",
            wal.records
        ),
    })
}

/// Layer files seen in a store directory, to count the bytes of new ones.
#[derive(Default)]
struct WrittenFiles {
    seen: HashSet<PathBuf>,
}

impl WrittenFiles {
    /// Bytes of the layer files in `dir` not seen before.
    fn scan_new(&mut self, dir: &Path) -> Result<u64, IngestBenchError> {
        let mut bytes = 0;
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let entry = entry.map_err(io_error("list", dir))?;
            let path = entry.path();
            if is_layer_file(&path) && !self.seen.contains(&path) {
                bytes += entry.metadata().map_err(io_error("stat", &path))?.len();
                self.seen.insert(path);
            }
        }
        Ok(bytes)
    }
}

/// Bytes and layer files in `dir`.
fn dir_size(dir: &Path) -> Result<(u64, usize), IngestBenchError> {
    let mut bytes = 0;
    let mut layers = 0;
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        bytes += entry.metadata().map_err(io_error("stat", &path))?.len();
        if is_layer_file(&path) {
            layers += 1;
        }
    }
    Ok((bytes, layers))
}

/// Baselines, then the ingest into a fresh store in `dir`; returns the store (flushed
/// and compacted) for reads.
fn ingest_run(
    options: &IngestBenchOptions,
    base: &BaseInfo,
    wal: &WalExtent,
    threshold: Threshold,
    dir: &Path,
    report: &mut IngestBenchReport,
) -> Result<(IngestRun, TimelineStore), IngestBenchError> {
    let mut run = IngestRun {
        label: threshold.label(),
        raw: raw_pass(options, base, wal)?,
        frame: frame_pass(options, base, wal, false)?,
        decode: frame_pass(options, base, wal, true)?,
        ..IngestRun::default()
    };

    if dir.exists() {
        fs::remove_dir_all(dir).map_err(io_error("remove", dir))?;
    }
    let store_config = StoreConfig {
        image_threshold_deltas: threshold.store_deltas(),
        ..StoreConfig::default()
    };
    let mut store = TimelineStore::create(dir, Lsn(base.lsn.0 - 1), store_config)?;
    let import = import_data_dir(&mut store, &options.base_datadir, base.lsn)?;
    store.freeze(base.lsn)?;
    store.flush()?;
    let mut written = WrittenFiles::default();
    let import_bytes = written.scan_new(dir)?;
    if report.runs.is_empty() {
        report.import = import;
        report.import_bytes = import_bytes;
    }

    let mut ingester = Ingester::new(IngestConfig {
        settings: base.settings,
        image_threshold_deltas: threshold.ingest_deltas(),
    });
    let mut materialize = materializer();
    let mut reader = wal_reader(options, base)?.with_limit(wal.end);
    let io_before = ProcIo::read();
    let watch = Stopwatch::start();
    let mut records = 0u64;
    while let Some(raw) = reader.next_raw_record()? {
        ingester
            .ingest(&mut store, &raw)
            .map_err(|source| IngestBenchError::Ingest {
                lsn: raw.lsn,
                source: Box::new(source),
            })?;
        records += 1;
        if store.open_layer_bytes() > options.flush_at_bytes {
            flush_and_compact(&mut store, &mut materialize, &mut written, dir, &mut run)?;
        }
    }
    flush_and_compact(&mut store, &mut materialize, &mut written, dir, &mut run)?;
    let times = watch.stop();
    run.io = io_before.zip(ProcIo::read()).map(|(b, a)| b.delta(a));
    check_records(options, wal, records)?;
    run.ingest = Pass {
        times,
        bytes: wal.end.0 - wal.start.0,
        records,
    };
    // The baselines again, just after: each keeps its faster pass.
    run.raw = faster(run.raw, raw_pass(options, base, wal)?);
    run.frame = faster(run.frame, frame_pass(options, base, wal, false)?);
    run.decode = faster(run.decode, frame_pass(options, base, wal, true)?);
    run.stats = ingester.stats().clone();
    (run.final_store_bytes, run.final_layers) = dir_size(dir)?;
    run.latest_lsn = store.last_lsn();
    Ok((run, store))
}

/// The pass with the shorter wall time.
fn faster(a: Pass, b: Pass) -> Pass {
    if b.times.wall < a.times.wall { b } else { a }
}

fn flush_and_compact(
    store: &mut TimelineStore,
    materialize: &mut dyn FnMut(
        tarn_pages::store::Key,
        Lsn,
        tarn_pages::store::ReconstructData,
    ) -> Result<bytes::Bytes, tarn_pages::store::MaterializeError>,
    written: &mut WrittenFiles,
    dir: &Path,
    run: &mut IngestRun,
) -> Result<(), IngestBenchError> {
    let watch = Stopwatch::start();
    store.freeze(store.last_lsn())?;
    store.flush()?;
    run.flushes += 1;
    let flushed = written.scan_new(dir)?;
    run.flushed_bytes += flushed;
    let compaction = store.compact(materialize)?;
    if compaction.l0_layers_merged > 0 {
        let totals = &mut run.compaction;
        totals.runs += 1;
        totals.l0_layers_merged += compaction.l0_layers_merged;
        totals.images_written += compaction.images_written;
        totals.images_materialized += compaction.images_materialized;
        totals.bytes_written += compaction.bytes_written;
        run.compaction_file_bytes += written.scan_new(dir)?;
    }
    run.flush_compact.add(watch.stop());
    Ok(())
}

// ---- the report ------------------------------------------------------------------------

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// Microseconds with a precision that suits their size.
fn us(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        let r = a / b;
        if r < 10.0 {
            format!("{r:.2}×")
        } else {
            format!("{r:.0}×")
        }
    } else {
        "–".to_string()
    }
}

/// Delta-count buckets of the sweep table: 0, 1, 2–3, ..., 32–63, 64+.
const SWEEP_BUCKETS: usize = 8;

fn sweep_bucket(deltas: u64) -> usize {
    ReconstructMetrics::bucket_of(u32::try_from(deltas).unwrap_or(u32::MAX)).min(SWEEP_BUCKETS - 1)
}

fn sweep_bucket_label(bucket: usize) -> String {
    if bucket == SWEEP_BUCKETS - 1 {
        format!("{}+", 1u32 << (bucket - 1))
    } else {
        ReconstructMetrics::bucket_label(bucket)
    }
}

const _: () = assert!(SWEEP_BUCKETS <= DELTA_BUCKETS);

impl IngestBenchReport {
    /// Markdown tables.
    pub fn render_markdown(&self) -> String {
        let mut out = String::new();
        self.render_setup(&mut out);
        self.render_ingest(&mut out);
        self.render_storage(&mut out);
        self.render_sweep_reads(&mut out);
        self.render_chains(&mut out);
        out
    }

    fn render_setup(&self, out: &mut String) {
        let w = &self.wal;
        let _ = writeln!(out, "### Setup");
        let _ = writeln!(out);
        if let Some(base) = &self.base {
            let _ = writeln!(
                out,
                "- Base: {} imported at its shutdown checkpoint {} ({} relation forks, {} blocks, \
                 {} MiB of layer files); checksums {}, wal_log_hints {}.",
                self.base_dir.display(),
                base.lsn,
                self.import.relation_forks,
                self.import.blocks,
                mib(self.import_bytes),
                if base.settings.data_checksums {
                    "on"
                } else {
                    "off"
                },
                if base.settings.wal_log_hints {
                    "on"
                } else {
                    "off"
                },
            );
        }
        let _ = writeln!(
            out,
            "- WAL: {}–{} ({} MiB of LSN span, {} records, {} MiB of record bytes); last record at {}.",
            w.start,
            w.end,
            mib(w.end.0 - w.start.0),
            w.records,
            mib(w.record_bytes),
            w.last_record
        );
        let _ = writeln!(
            out,
            "- One thread. Freeze + flush + compaction whenever the open layer exceeds {} MiB, \
             and at the end. Rates are MiB of WAL (LSN span) per second.",
            self.flush_at_bytes >> 20
        );
        if !self.rels.is_empty() {
            let rels: Vec<String> = self
                .rels
                .iter()
                .map(|(name, r)| format!("{name} = {}/{}/{}", r.spc_node, r.db_node, r.rel_node))
                .collect();
            let _ = writeln!(out, "- Relations: {}.", rels.join(", "));
        }
        let _ = writeln!(out);
    }

    fn render_ingest(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "### WAL ingest, one thread (baselines in the same process, the faster of a pass just before and one just after each ingest)"
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| threshold | raw read MiB/s | read+frame MiB/s | read+frame+decode MiB/s | ingest MiB/s | ingest MiB per CPU-s | ingest MiB/s without flush+compact | ingest records/s | decode records/s | **ingest ÷ decode (wall time)** | ingest ÷ decode (CPU time) | ingest ÷ raw read (wall time) | flush+compact share of ingest |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in &self.runs {
            let label = if r.in_sweep {
                r.label.clone()
            } else {
                format!("{} (chain store)", r.label)
            };
            let _ = writeln!(
                out,
                "| {label} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | **{}** | {} | {} | {:.0} % |",
                r.raw.mib_per_sec(),
                r.frame.mib_per_sec(),
                r.decode.mib_per_sec(),
                r.ingest.mib_per_sec(),
                r.ingest.mib_per_cpu_sec(),
                rate(
                    r.ingest.bytes as f64 / MIB,
                    r.ingest.times.wall.saturating_sub(r.flush_compact.wall)
                ),
                r.ingest.records_per_sec(),
                r.decode.records_per_sec(),
                ratio(
                    r.ingest.times.wall.as_secs_f64(),
                    r.decode.times.wall.as_secs_f64()
                ),
                ratio(
                    r.ingest.times.cpu.as_secs_f64(),
                    r.decode.times.cpu.as_secs_f64()
                ),
                ratio(
                    r.ingest.times.wall.as_secs_f64(),
                    r.raw.times.wall.as_secs_f64()
                ),
                100.0 * r.flush_compact.wall.as_secs_f64()
                    / r.ingest.times.wall.as_secs_f64().max(1e-9),
            );
        }
        let _ = writeln!(out);
    }

    fn render_storage(&self, out: &mut String) {
        let wal_bytes = (self.wal.end.0 - self.wal.start.0) as f64;
        let _ = writeln!(out, "### Pushdown threshold: what ingest wrote");
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| threshold | pushdown images | compaction images (materialized) | compactions | L0 MiB flushed | compaction MiB | **layer MiB written** | ÷ WAL | final store MiB (layers) | write() MiB | storage write MiB |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        for r in self.runs.iter().filter(|r| r.in_sweep) {
            let (wchar, storage) = match r.io {
                Some(io) => (mib(io.wchar), mib(io.write_bytes)),
                None => ("n/a".into(), "n/a".into()),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} ({}) | {} | {} | {} | **{}** | {:.2} | {} ({}) | {} | {} |",
                r.label,
                r.stats.pushdown_images,
                r.compaction.images_written,
                r.compaction.images_materialized,
                r.compaction.runs,
                mib(r.flushed_bytes),
                mib(r.compaction_file_bytes),
                mib(r.layer_bytes_written()),
                r.layer_bytes_written() as f64 / wal_bytes.max(1.0),
                mib(r.final_store_bytes),
                r.final_layers,
                wchar,
                storage,
            );
        }
        let _ = writeln!(out);
        if let Some(r) = self.runs.first() {
            let s = &r.stats;
            let _ = writeln!(
                out,
                "Ingest counts (threshold {}): {} records ({} without page effects), {} WAL deltas, {} WAL images, \
                 {} synthesized deltas, {} puts, {} pushdown failures.",
                r.label,
                s.records,
                s.records_without_page_effects,
                s.wal_deltas,
                s.wal_images,
                s.synthesized_deltas,
                s.puts,
                s.pushdown_failures
            );
            let _ = writeln!(out);
        }
    }

    fn render_sweep_reads(&self, out: &mut String) {
        let Some(first) = self.runs.iter().find(|r| r.in_sweep && !r.reads.is_empty()) else {
            return;
        };
        let _ = writeln!(
            out,
            "### Pushdown threshold: GetPage at the latest LSN ({}), in process, one thread",
            first.latest_lsn
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Seeded random blocks of each relation (the same blocks for every threshold). Hot: \
             layer files in the page cache; cold: every layer file evicted (POSIX_FADV_DONTNEED) \
             before each read. Latencies in µs. Deltas replayed per read in buckets."
        );
        let _ = writeln!(out);
        let mut header = String::from(
            "| threshold | relation | blocks | reads (hot) | hot p50 | hot p99 | hot pages/s | cold p50 | cold p99 | cold KiB from disk/read | deltas mean | max |",
        );
        let mut rule = String::from(
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        );
        for b in 0..SWEEP_BUCKETS {
            let _ = write!(header, " {} |", sweep_bucket_label(b));
            rule.push_str(" --- |");
        }
        header.push_str(" layer blocks/get |");
        rule.push_str(" --- |");
        let _ = writeln!(out, "{header}");
        let _ = writeln!(out, "{rule}");
        for r in self.runs.iter().filter(|r| r.in_sweep) {
            for rel in &r.reads {
                let hot = rel.hot.summary();
                let cold = rel.cold.summary();
                let mut buckets = [0u64; SWEEP_BUCKETS];
                for d in &rel.deltas {
                    buckets[sweep_bucket(*d)] += 1;
                }
                let n = rel.deltas.len().max(1) as f64;
                let mean = rel.deltas.iter().sum::<u64>() as f64 / n;
                let max = rel.deltas.iter().max().copied().unwrap_or(0);
                let mut line = format!(
                    "| {} | {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {} |",
                    r.label,
                    rel.name,
                    rel.nblocks,
                    hot.count,
                    us(hot.p50_us),
                    us(hot.p99_us),
                    rel.hot.per_sec(),
                    us(cold.p50_us),
                    us(cold.p99_us),
                    rel.cold
                        .storage_kib_per_read()
                        .map_or("n/a".into(), |k| format!("{k:.0}")),
                    mean,
                    max
                );
                for count in buckets {
                    if count == 0 {
                        line.push_str(" |");
                    } else {
                        let _ = write!(line, " {:.0} % |", 100.0 * count as f64 / n);
                    }
                }
                let blocks = rel.hot.blocks_and_layers_per_get().map_or(0.0, |(b, _)| b);
                let _ = write!(line, " {blocks:.1} |");
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = writeln!(out);
    }

    fn render_chains(&self, out: &mut String) {
        let Some(run) = self.runs.iter().find(|r| r.chain.is_some()) else {
            return;
        };
        let Some(c) = &run.chain else { return };
        let _ = writeln!(
            out,
            "### GetPage@LSN by deltas replayed (store of threshold {}), in process, one thread",
            run.label
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} main-fork blocks walked, {} image+deltas segments found, {} with ≥ {} deltas (and \
             {} more of blocks that did not exist at an LSN to read, left out); {} sampled \
             ({} distinct pages; by relation: {}). Each case reads the same segments at the LSN that \
             replays exactly that many deltas (checked on every read). Store: {} layer files, {} MiB. \
             Hot: {} passes after a warmup; cold: every layer file evicted before each read.",
            c.keys_walked,
            c.segments_found,
            c.eligible_segments,
            c.gets.iter().map(|(k, _, _)| *k).max().unwrap_or(0),
            c.segments_of_missing_blocks,
            c.sampled_segments,
            c.distinct_keys,
            c.by_relation
                .iter()
                .map(|(rel, n)| format!("{rel} {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            c.layer_files,
            mib(c.layer_bytes),
            c.hot_passes,
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| case | reads | p50 µs | p90 | p99 | p99.9 | max | mean | pages/s | **p50 ÷ memcpy** | p50 ÷ pread | KiB from disk/read | mean µs: page's versions from the store / replay | layer blocks / layers per get |"
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
        );
        let memcpy = c.hot_memcpy.summary().p50_us;
        let hot_pread = c.hot_pread.summary().p50_us;
        let cold_pread = c.cold_pread.summary().p50_us;
        let row = |out: &mut String, name: String, case: &Case, pread: f64| {
            let s = case.summary();
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.0} | **{}** | {} | {} | {} | {} |",
                s.count,
                us(s.p50_us),
                us(s.p90_us),
                us(s.p99_us),
                us(s.p999_us),
                us(s.max_us),
                us(s.mean_us),
                case.per_sec(),
                ratio(s.p50_us, memcpy),
                ratio(s.p50_us, pread),
                case.storage_kib_per_read()
                    .map_or("–".into(), |k| format!("{k:.0}")),
                case.store_and_replay_us()
                    .map_or("–".into(), |(store, replay)| format!(
                        "{} / {}",
                        us(store),
                        us(replay)
                    )),
                case.blocks_and_layers_per_get()
                    .map_or("–".into(), |(blocks, layers)| format!(
                        "{blocks:.1} / {layers:.1}"
                    )),
            );
        };
        for (k, hot, _) in &c.gets {
            row(out, format!("hot GetPage, {k} deltas"), hot, hot_pread);
        }
        row(out, "hot memcpy 8 KiB".into(), &c.hot_memcpy, hot_pread);
        row(
            out,
            "hot pread 8 KiB of a layer file".into(),
            &c.hot_pread,
            hot_pread,
        );
        row(out, "(timer alone)".into(), &c.timer, hot_pread);
        for (k, _, cold) in &c.gets {
            row(out, format!("cold GetPage, {k} deltas"), cold, cold_pread);
        }
        row(
            out,
            "cold pread 8 KiB of a layer file".into(),
            &c.cold_pread,
            cold_pread,
        );
        let _ = writeln!(out);
        let hot_p50 = |k: u32| {
            c.gets
                .iter()
                .find(|(len, _, _)| *len == k)
                .map(|(_, h, _)| h.summary().p50_us)
        };
        let lengths: Vec<u32> = c.gets.iter().map(|(k, _, _)| *k).collect();
        let slopes: Vec<String> = lengths
            .windows(2)
            .filter_map(|w| {
                let (a, b) = (hot_p50(w[0])?, hot_p50(w[1])?);
                Some(format!(
                    "{}→{} deltas: {:.2} µs per delta",
                    w[0],
                    w[1],
                    (b - a) / f64::from(w[1] - w[0])
                ))
            })
            .collect();
        if let (Some(&lo), Some(&hi)) = (lengths.first(), lengths.last())
            && hi > lo
            && let (Some(a), Some(b)) = (hot_p50(lo), hot_p50(hi))
        {
            let measured: Vec<String> = c
                .gets
                .iter()
                .filter_map(|(k, hot, _)| {
                    let m = hot.reader.filter(|m| m.deltas_replayed > 0)?;
                    Some(format!(
                        "{k} deltas: {:.2} µs",
                        m.replay_nanos_per_delta() as f64 / 1000.0
                    ))
                })
                .collect();
            let _ = writeln!(
                out,
                "Hot replay cost from the p50s: ({} − {}) µs ÷ {} deltas = **{:.2} µs per delta** ({}). \
                 Replay time per delta as the reader measures it (mean): {}.",
                us(b),
                us(a),
                hi - lo,
                (b - a) / f64::from(hi - lo),
                slopes.join("; "),
                measured.join(", ")
            );
            let _ = writeln!(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTROLDATA: &str = "\
pg_control version number:            1300
Database system identifier:           7710764481575407876
Database cluster state:               shut down
Latest checkpoint location:           0/1500708
Latest checkpoint's REDO location:    0/1500708
Latest checkpoint's TimeLineID:       1
wal_log_hints setting:                off
Bytes per WAL segment:                16777216
Data page checksum version:           0
";

    #[test]
    fn controldata_of_a_clean_shutdown_parses() {
        let base = parse_controldata(CONTROLDATA).expect("parses");
        assert_eq!(base.lsn, Lsn(0x0150_0708));
        assert_eq!(base.timeline, 1);
        assert_eq!(base.params.segment_size_bytes, 16 << 20);
        assert_eq!(
            base.params.system_id,
            Some(SystemId(7_710_764_481_575_407_876))
        );
        assert_eq!(base.settings, RedoSettings::default());
    }

    #[test]
    fn controldata_of_a_running_or_crashed_cluster_is_refused() {
        let running = CONTROLDATA.replace("shut down", "in production");
        assert!(parse_controldata(&running).is_err());
        let online =
            CONTROLDATA.replace("REDO location:    0/1500708", "REDO location:    0/1500600");
        assert!(parse_controldata(&online).is_err());
        assert!(parse_controldata("").is_err());
    }

    #[test]
    fn thresholds_and_relations_parse() {
        assert_eq!(Threshold::parse(" 16"), Ok(Threshold::Deltas(16)));
        assert_eq!(Threshold::parse("off"), Ok(Threshold::Off));
        assert!(Threshold::parse("0").is_err());
        assert!(Threshold::parse("x").is_err());
        assert_eq!(Threshold::Off.ingest_deltas(), 0);
        assert_eq!(Threshold::Off.store_deltas(), u32::MAX);
        assert_eq!(
            parse_named_rel("accounts=1663/5/16384").expect("parses"),
            (
                "accounts".to_string(),
                RelFileNode {
                    spc_node: 1663,
                    db_node: 5,
                    rel_node: 16384
                }
            )
        );
        assert!(parse_named_rel("1663/5/16384").is_err());
        assert!(parse_named_rel("a=1/2").is_err());
    }

    #[test]
    fn sweep_buckets_end_in_an_open_one() {
        assert_eq!(sweep_bucket(0), 0);
        assert_eq!(sweep_bucket(3), 2);
        assert_eq!(sweep_bucket(63), 6);
        assert_eq!(sweep_bucket(64), 7);
        assert_eq!(sweep_bucket(100_000), 7);
        assert_eq!(sweep_bucket_label(7), "64+");
        assert_eq!(sweep_bucket_label(2), "2-3");
    }
}
