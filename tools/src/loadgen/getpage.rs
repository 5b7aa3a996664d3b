//! `tarn loadgen getpage`: reads pages of one relation from the pageserver over the
//! real GetPage@LSN protocol and measures request latency and throughput. The same
//! block selection can instead `pread` 8 KiB blocks from a file (Postgres's own data
//! file of the relation) as a baseline.
//!
//! Blocks are drawn uniformly from the relation's first `blocks` blocks, or from a hot
//! set (the first `hot_set × blocks` of them). Requests are at the newest ingested LSN
//! (LSN 0 on the wire) or at an LSN drawn uniformly from `[min_lsn, latest]`, where
//! latest is the pageserver's last ingested LSN when the run starts.
//!
//! Each of `concurrency` connections is driven by one thread that keeps up to
//! `pipeline` requests outstanding. A request's latency runs from writing it to
//! reading its response. Requests sent during the warmup are not measured; after the
//! measured window (or once the request budget is spent) no new request is sent and
//! the outstanding ones are drained.

use std::collections::VecDeque;
use std::fs::File;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tarn_pages::BLCKSZ;
use tarn_pages::service::client::{ClientError, PageserverClient};
use tarn_pages::service::protocol::{RelRequest, Request, Response};
use tarn_wal::decode::{ForkNumber, RelFileNode};
use tarn_wal::{Lsn, TimelineId};

use super::report::{GetPageLoadReport, LatencyHistogram};

/// Bounds on the options.
pub const MAX_CONCURRENCY: usize = 64;
/// The pageserver reads at most this many requests of one connection ahead.
pub const MAX_PIPELINE: usize = tarn_pages::service::server::MAX_PIPELINED_REQUESTS;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Which LSN each request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LsnMode {
    /// The newest LSN the pageserver has ingested.
    Latest,
    /// Uniformly from `[min, latest at start]`.
    Historic { min: Lsn },
}

/// What is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// GetPage requests to this pageserver (`host:port`).
    Pageserver(String),
    /// `pread` of 8 KiB blocks from this file (the LSN mode is ignored).
    File(PathBuf),
}

#[derive(Clone, Debug)]
pub struct GetPageLoadOptions {
    pub target: Target,
    /// The timeline to read; `None`: the pageserver's only root timeline.
    pub timeline: Option<TimelineId>,
    pub rel: RelFileNode,
    pub fork: ForkNumber,
    /// Blocks to draw from; `None`: the relation's size (at the latest LSN, or at
    /// `min` for historic reads; the file's size for `pread`).
    pub blocks: Option<u32>,
    /// Draw only from the first `hot_set × blocks` blocks (1.0: all of them).
    pub hot_set: f64,
    pub lsn: LsnMode,
    pub concurrency: usize,
    pub pipeline: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Stop after this many measured requests in all (split over the connections).
    pub requests: Option<u64>,
    /// Random seed; from the clock if `None`.
    pub seed: Option<u64>,
}

impl Default for GetPageLoadOptions {
    fn default() -> Self {
        GetPageLoadOptions {
            target: Target::Pageserver(String::new()),
            timeline: None,
            rel: RelFileNode::default(),
            fork: ForkNumber::Main,
            blocks: None,
            hot_set: 1.0,
            lsn: LsnMode::Latest,
            concurrency: 1,
            pipeline: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(1),
            requests: None,
            seed: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GetPageLoadError {
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("cannot resolve pageserver address {addr}: {detail}")]
    Resolve { addr: String, detail: String },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the pageserver answered {during} with {answer}")]
    Unexpected {
        during: &'static str,
        answer: String,
    },
    #[error("{path}: {cause}")]
    File { path: String, cause: std::io::Error },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("a load generator thread panicked")]
    Panicked,
}

/// Parses `--lsn`: `latest`, or `historic` (which needs `min_lsn`).
pub fn parse_lsn_mode(text: &str, min_lsn: Option<Lsn>) -> Result<LsnMode, String> {
    match (text, min_lsn) {
        ("latest", None) => Ok(LsnMode::Latest),
        ("latest", Some(_)) => Err("--min-lsn applies only to --lsn historic".into()),
        ("historic", Some(min)) if min != Lsn::INVALID => Ok(LsnMode::Historic { min }),
        ("historic", _) => Err("--lsn historic needs a valid --min-lsn".into()),
        (other, _) => Err(format!("--lsn {other:?} is neither latest nor historic")),
    }
}

/// splitmix64: small, fast, good enough for choosing blocks.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)` (`n > 0`), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// Chooses each request's block and LSN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selection {
    /// Blocks `[0, hot_blocks)` are drawn from.
    pub hot_blocks: u32,
    /// `None`: the latest LSN; else uniformly from `[lo, hi]`.
    pub lsn_range: Option<(Lsn, Lsn)>,
}

impl Selection {
    pub fn new(blocks: u32, hot_set: f64, lsn: LsnMode, latest: Lsn) -> Result<Selection, String> {
        if blocks == 0 {
            return Err("the relation has no blocks to read".into());
        }
        if !(hot_set > 0.0 && hot_set <= 1.0) {
            return Err(format!("--hot-set {hot_set} is not in (0, 1]"));
        }
        let hot_blocks = ((f64::from(blocks) * hot_set).ceil() as u32).clamp(1, blocks);
        let lsn_range = match lsn {
            LsnMode::Latest => None,
            LsnMode::Historic { min } if min <= latest => Some((min, latest)),
            LsnMode::Historic { min } => {
                return Err(format!(
                    "--min-lsn {min} is past the pageserver's last ingested LSN {latest}"
                ));
            }
        };
        Ok(Selection {
            hot_blocks,
            lsn_range,
        })
    }

    pub fn pick(&self, rng: &mut Rng) -> (u32, Lsn) {
        let blk = rng.below(u64::from(self.hot_blocks)) as u32;
        let lsn = match self.lsn_range {
            None => Lsn::INVALID,
            Some((lo, hi)) => Lsn(lo.0 + rng.below(hi.0 - lo.0 + 1)),
        };
        (blk, lsn)
    }
}

fn validate(o: &GetPageLoadOptions) -> Result<(), GetPageLoadError> {
    let bad = |m: String| Err(GetPageLoadError::InvalidOption(m));
    if o.concurrency == 0 || o.concurrency > MAX_CONCURRENCY {
        return bad(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
    }
    if o.pipeline == 0 || o.pipeline > MAX_PIPELINE {
        return bad(format!("--pipeline must be 1..={MAX_PIPELINE}"));
    }
    if o.duration.is_zero() && o.requests.is_none() {
        return bad("--duration must be positive".into());
    }
    if o.requests == Some(0) {
        return bad("--requests must be positive".into());
    }
    if !(o.hot_set > 0.0 && o.hot_set <= 1.0) {
        return bad(format!("--hot-set {} is not in (0, 1]", o.hot_set));
    }
    Ok(())
}

fn connect(addr: SocketAddr) -> Result<PageserverClient, GetPageLoadError> {
    Ok(PageserverClient::connect(addr, IO_TIMEOUT)?)
}

fn unexpected(during: &'static str, answer: Response) -> GetPageLoadError {
    let answer = match answer {
        Response::Page(_) => "a page".to_string(),
        Response::Error { code, message } => format!("{code:?}: {message}"),
        other => format!("{other:?}"),
    };
    GetPageLoadError::Unexpected { during, answer }
}

/// One worker's results.
#[derive(Default)]
struct WorkerResult {
    latency: LatencyHistogram,
    errors: u64,
    first_error: Option<String>,
    last_completion: Option<Instant>,
}

#[derive(Clone, Copy)]
struct Window {
    measure_from: Instant,
    send_until: Instant,
    /// Measured requests this worker may send.
    quota: Option<u64>,
}

impl Window {
    fn may_send(&self, now: Instant, measured_sent: u64) -> bool {
        match self.quota {
            Some(q) => measured_sent < q,
            None => now < self.send_until,
        }
    }
}

#[allow(clippy::too_many_arguments)] // one worker's whole setup, passed once
fn run_pageserver_worker(
    mut client: PageserverClient,
    timeline: TimelineId,
    rel: RelFileNode,
    fork: ForkNumber,
    selection: Selection,
    mut rng: Rng,
    pipeline: usize,
    window: Window,
) -> Result<WorkerResult, GetPageLoadError> {
    let mut out = WorkerResult::default();
    // Send time of each outstanding request, and whether it is measured.
    let mut outstanding: VecDeque<(Instant, bool)> = VecDeque::with_capacity(pipeline);
    let mut measured_sent = 0u64;
    loop {
        while outstanding.len() < pipeline {
            let now = Instant::now();
            if !window.may_send(now, measured_sent) {
                break;
            }
            let (blk, lsn) = selection.pick(&mut rng);
            let request = Request::GetPage(RelRequest {
                timeline,
                rel,
                fork,
                blk,
                lsn,
            });
            let sent = Instant::now();
            client.send(&request)?;
            let measured = sent >= window.measure_from;
            measured_sent += u64::from(measured);
            outstanding.push_back((sent, measured));
        }
        let Some((sent, measured)) = outstanding.pop_front() else {
            return Ok(out);
        };
        let response = client.receive()?;
        let done = Instant::now();
        if !measured {
            continue;
        }
        match response {
            Response::Page(_) => {
                out.latency.record(done - sent);
                out.last_completion = Some(done);
            }
            other => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(unexpected("GetPage", other).to_string());
                }
            }
        }
    }
}

fn run_pread_worker(
    file: &File,
    selection: Selection,
    mut rng: Rng,
    window: Window,
) -> Result<WorkerResult, std::io::Error> {
    let mut out = WorkerResult::default();
    let mut page = vec![0u8; BLCKSZ];
    let mut measured_sent = 0u64;
    loop {
        let now = Instant::now();
        if !window.may_send(now, measured_sent) {
            return Ok(out);
        }
        let (blk, _) = selection.pick(&mut rng);
        let sent = Instant::now();
        file.read_exact_at(&mut page, u64::from(blk) * BLCKSZ as u64)?;
        let done = Instant::now();
        if sent >= window.measure_from {
            measured_sent += 1;
            out.latency.record(done - sent);
            out.last_completion = Some(done);
        }
    }
}

fn fmt_rel(rel: RelFileNode) -> String {
    format!("{}/{}/{}", rel.spc_node, rel.db_node, rel.rel_node)
}

/// Runs the load and reports what it measured.
pub fn run(options: &GetPageLoadOptions) -> Result<GetPageLoadReport, GetPageLoadError> {
    validate(options)?;
    let seed = options.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let invalid = GetPageLoadError::InvalidOption;

    // Resolve the target, the relation's size and the latest LSN.
    enum Resolved {
        Pageserver(SocketAddr, TimelineId),
        File(File),
    }
    let (resolved, blocks, latest, target_name) = match &options.target {
        Target::Pageserver(addr_text) => {
            let addr = addr_text
                .to_socket_addrs()
                .map_err(|e| GetPageLoadError::Resolve {
                    addr: addr_text.clone(),
                    detail: e.to_string(),
                })?
                .next()
                .ok_or_else(|| GetPageLoadError::Resolve {
                    addr: addr_text.clone(),
                    detail: "no address".into(),
                })?;
            let mut client = connect(addr)?;
            let timeline = client.timeline_or_default(options.timeline)?;
            let latest = match client.call(&Request::Status { timeline })? {
                Response::Status {
                    last_ingested_lsn, ..
                } => last_ingested_lsn,
                other => return Err(unexpected("Status", other)),
            };
            let blocks = match options.blocks {
                Some(n) => n,
                None => {
                    let at = match options.lsn {
                        LsnMode::Latest => Lsn::INVALID,
                        LsnMode::Historic { min } => min,
                    };
                    match client.call(&Request::RelSize(RelRequest {
                        timeline,
                        rel: options.rel,
                        fork: options.fork,
                        blk: 0,
                        lsn: at,
                    }))? {
                        Response::Size(n) => n,
                        other => return Err(unexpected("RelSize", other)),
                    }
                }
            };
            (
                Resolved::Pageserver(addr, timeline),
                blocks,
                latest,
                format!("pageserver {addr_text}"),
            )
        }
        Target::File(path) => {
            let file_err = |cause| GetPageLoadError::File {
                path: path.display().to_string(),
                cause,
            };
            let file = File::open(path).map_err(file_err)?;
            let size = file.metadata().map_err(file_err)?.len() / BLCKSZ as u64;
            let blocks = options
                .blocks
                .unwrap_or(u32::try_from(size).unwrap_or(u32::MAX));
            if u64::from(blocks) > size {
                return Err(invalid(format!(
                    "--blocks {blocks} exceeds the {size} blocks of {}",
                    path.display()
                )));
            }
            (
                Resolved::File(file),
                blocks,
                Lsn::INVALID,
                format!("pread {}", path.display()),
            )
        }
    };
    let lsn_mode = match resolved {
        Resolved::File(_) => LsnMode::Latest,
        Resolved::Pageserver(..) => options.lsn,
    };
    let selection = Selection::new(blocks, options.hot_set, lsn_mode, latest).map_err(invalid)?;

    // Connect every worker before any starts, so they measure the same window.
    let mut clients = Vec::new();
    if let Resolved::Pageserver(addr, _) = &resolved {
        for _ in 0..options.concurrency {
            clients.push(connect(*addr)?);
        }
    }
    let started = Instant::now();
    let window = |i: usize| Window {
        measure_from: started + options.warmup,
        send_until: started + options.warmup + options.duration,
        quota: options.requests.map(|total| {
            let c = options.concurrency as u64;
            total / c + u64::from((i as u64) < total % c)
        }),
    };
    let results: Vec<Result<WorkerResult, GetPageLoadError>> = thread::scope(|scope| {
        let mut handles = Vec::new();
        for i in 0..options.concurrency {
            let selection = selection.clone();
            let rng = Rng::new(seed.wrapping_add((i as u64).wrapping_mul(0x1000_0001)));
            let window = window(i);
            let handle = match &resolved {
                Resolved::Pageserver(_, timeline) => {
                    let client = clients.pop().expect("one client per worker");
                    let (rel, fork, pipeline) = (options.rel, options.fork, options.pipeline);
                    let timeline = *timeline;
                    thread::Builder::new()
                        .name(format!("getpage-{i}"))
                        .spawn_scoped(scope, move || {
                            run_pageserver_worker(
                                client, timeline, rel, fork, selection, rng, pipeline, window,
                            )
                        })
                }
                Resolved::File(file) => {
                    let path = target_name.clone();
                    thread::Builder::new()
                        .name(format!("pread-{i}"))
                        .spawn_scoped(scope, move || {
                            run_pread_worker(file, selection, rng, window)
                                .map_err(|cause| GetPageLoadError::File { path, cause })
                        })
                }
            };
            match handle {
                Ok(h) => handles.push(h),
                Err(e) => {
                    handles.clear();
                    return vec![Err(GetPageLoadError::Thread(e))];
                }
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(GetPageLoadError::Panicked)))
            .collect()
    });

    let mut latency = LatencyHistogram::default();
    let mut errors = 0;
    let mut first_error = None;
    let mut last = None::<Instant>;
    for result in results {
        let r = result?;
        latency.merge(&r.latency);
        errors += r.errors;
        first_error = first_error.or(r.first_error);
        last = last.max(r.last_completion);
    }
    let measure_from = started + options.warmup;
    let measured_secs = last
        .map(|l| l.saturating_duration_since(measure_from).as_secs_f64())
        .unwrap_or(0.0);
    let pages = latency.count();
    let (lsn_text, min_lsn) = match lsn_mode {
        LsnMode::Latest => ("latest", None),
        LsnMode::Historic { min } => ("historic", Some(min.to_string())),
    };
    Ok(GetPageLoadReport {
        target: target_name,
        rel: fmt_rel(options.rel),
        blocks,
        hot_blocks: selection.hot_blocks,
        lsn: lsn_text.to_string(),
        min_lsn,
        latest_lsn: matches!(lsn_mode, LsnMode::Historic { .. }).then(|| latest.to_string()),
        concurrency: options.concurrency,
        pipeline: options.pipeline,
        warmup_secs: options.warmup.as_secs_f64(),
        measured_secs,
        pages,
        errors,
        first_error,
        pages_per_sec: if measured_secs > 0.0 {
            pages as f64 / measured_secs
        } else {
            0.0
        },
        latency: latency.summary(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_mode_parsing() {
        assert_eq!(parse_lsn_mode("latest", None), Ok(LsnMode::Latest));
        assert_eq!(
            parse_lsn_mode("historic", Some(Lsn(0x100))),
            Ok(LsnMode::Historic { min: Lsn(0x100) })
        );
        assert!(parse_lsn_mode("historic", None).is_err());
        assert!(parse_lsn_mode("historic", Some(Lsn::INVALID)).is_err());
        assert!(parse_lsn_mode("latest", Some(Lsn(5))).is_err());
        assert!(parse_lsn_mode("newest", None).is_err());
    }

    #[test]
    fn hot_set_bounds_the_blocks_drawn() {
        let s = Selection::new(1000, 0.1, LsnMode::Latest, Lsn(1)).expect("valid");
        assert_eq!(s.hot_blocks, 100);
        let mut rng = Rng::new(7);
        let mut seen = [false; 100];
        for _ in 0..20_000 {
            let (blk, lsn) = s.pick(&mut rng);
            assert!(blk < 100, "{blk}");
            assert_eq!(lsn, Lsn::INVALID);
            seen[blk as usize] = true;
        }
        assert!(seen.iter().all(|&s| s), "every hot block is drawn");
        // A tiny fraction still reads one block; the whole set reads every block.
        assert_eq!(
            Selection::new(10, 1e-9, LsnMode::Latest, Lsn(1))
                .expect("valid")
                .hot_blocks,
            1
        );
        assert_eq!(
            Selection::new(10, 1.0, LsnMode::Latest, Lsn(1))
                .expect("valid")
                .hot_blocks,
            10
        );
        assert!(Selection::new(10, 0.0, LsnMode::Latest, Lsn(1)).is_err());
        assert!(Selection::new(10, 1.5, LsnMode::Latest, Lsn(1)).is_err());
        assert!(Selection::new(0, 1.0, LsnMode::Latest, Lsn(1)).is_err());
    }

    #[test]
    fn historic_lsns_fall_in_range() {
        let (lo, hi) = (Lsn(0x0100_0000), Lsn(0x0100_0010));
        let s = Selection::new(4, 1.0, LsnMode::Historic { min: lo }, hi).expect("valid");
        let mut rng = Rng::new(1);
        let (mut saw_lo, mut saw_hi) = (false, false);
        for _ in 0..10_000 {
            let (blk, lsn) = s.pick(&mut rng);
            assert!(blk < 4);
            assert!(lo <= lsn && lsn <= hi, "{lsn}");
            saw_lo |= lsn == lo;
            saw_hi |= lsn == hi;
        }
        assert!(saw_lo && saw_hi, "both ends are reachable");
        assert!(Selection::new(4, 1.0, LsnMode::Historic { min: hi }, lo).is_err());
    }

    #[test]
    fn quota_splits_requests_over_workers() {
        let now = Instant::now();
        let w = |quota| Window {
            measure_from: now,
            send_until: now,
            quota,
        };
        assert!(w(Some(2)).may_send(now, 1));
        assert!(!w(Some(2)).may_send(now, 2));
        assert!(!w(None).may_send(now, 0));
    }

    #[test]
    fn pread_reads_the_drawn_blocks() {
        let dir = std::env::temp_dir().join(format!("tarn-getpage-pread-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("rel");
        std::fs::write(&path, vec![0u8; BLCKSZ * 8]).expect("write");
        let report = run(&GetPageLoadOptions {
            target: Target::File(path),
            concurrency: 2,
            warmup: Duration::ZERO,
            requests: Some(101),
            hot_set: 0.5,
            seed: Some(3),
            ..Default::default()
        })
        .expect("run");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(report.pages, 101);
        assert_eq!(report.blocks, 8);
        assert_eq!(report.hot_blocks, 4);
        assert_eq!(report.errors, 0);
    }
}
