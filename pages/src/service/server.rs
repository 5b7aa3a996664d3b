//! The pageserver role for one timeline: one thread owns the [`TimelineStore`] and the
//! [`Ingester`], ingests committed WAL from the safekeepers and answers GetPage@LSN
//! requests; connection threads only decode frames and write responses in order.
//!
//! A request waits (at most [`REQUEST_WAIT`]) until ingest reaches its LSN. The store
//! is frozen and flushed every [`FLUSH_INTERVAL`] or [`FLUSH_AT_BYTES`]; after a
//! restart, ingest resumes from the durable LSN (a record boundary) and WAL above it
//! is read again.

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use tarn_wal::decode::WalStreamDecoder;
use tarn_wal::format::{WalFormatError, WalStreamParams};
use tarn_wal::{Lsn, TimelineId};

use super::follower::{FollowError, WalFollower};
use super::protocol::{
    ErrorCode, GetPageStats, RelRequest, Request, Response, ServiceProtocolError, decode_request,
    encode_response, read_frame,
};
use crate::ingest::import::{ImportError, import_data_dir};
use crate::ingest::{DEFAULT_IMAGE_THRESHOLD_DELTAS, IngestConfig, Ingester};
use crate::reconstruct::{PageReader, ReconstructError, get_rel_size, materializer, rel_exists};
use crate::store::{Key, StoreConfig, StoreError, TimelineStore};
use crate::{BLCKSZ, RedoSettings};

/// How long a request waits for ingest to reach its LSN before it fails with
/// [`ErrorCode::Timeout`].
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// Requests queued for the store thread; beyond it a request fails with
/// [`ErrorCode::Overloaded`] instead of growing memory.
pub const MAX_QUEUED_REQUESTS: usize = 4096;
/// Requests in flight on one connection (read, not yet answered): the pipeline depth.
pub const MAX_PIPELINED_REQUESTS: usize = 128;
/// Concurrent client connections.
pub const MAX_CONNECTIONS: usize = 64;
/// The store is made durable at least this often while WAL arrives.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// ... and whenever its open layer grows past this.
pub const FLUSH_AT_BYTES: usize = 32 << 20;
/// The store thread sleeps at most this long when it has nothing to do, so new WAL and
/// shutdown requests are noticed promptly.
const IDLE_WAIT: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct PageserverConfig {
    pub timeline_id: TimelineId,
    pub safekeepers: Vec<SocketAddr>,
    /// The store lives in `dir/<timeline id>`.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// A cleanly shut down data directory and its checkpoint LSN, imported once when
    /// the store is new.
    pub base: Option<(PathBuf, Lsn)>,
    /// The cluster's settings at the base LSN.
    pub settings: RedoSettings,
    pub segment_size_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PageserverError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("{} holds no store and no --base-datadir was given to seed one", dir.display())]
    NoBase { dir: PathBuf },
    #[error("importing the base data directory: {0}")]
    Import(#[from] ImportError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Follow(#[from] FollowError),
    #[error("cannot decode WAL from {lsn}: {source}")]
    Decoder { lsn: Lsn, source: WalFormatError },
}

struct Job {
    request: Request,
    deadline: Instant,
    reply: SyncSender<Response>,
}

/// Runs the pageserver until `shutdown` is set; then flushes the store and returns.
pub fn run(config: PageserverConfig, shutdown: Arc<AtomicBool>) -> Result<(), PageserverError> {
    let store = open_or_seed(&config)?;
    let listener = TcpListener::bind(config.listen).map_err(|source| PageserverError::Listen {
        addr: config.listen,
        source,
    })?;
    let (jobs, job_queue) = mpsc::sync_channel::<Job>(MAX_QUEUED_REQUESTS);
    thread::Builder::new()
        .name("pageserver-accept".into())
        .spawn(move || accept_loop(listener, jobs))
        .map_err(|source| PageserverError::Listen {
            addr: config.listen,
            source,
        })?;
    tracing::info!(listen = %config.listen, timeline = %config.timeline_id, durable_lsn = %store.durable_lsn(), "pageserver is serving");
    let mut core = StoreThread {
        ingester: Ingester::new(IngestConfig {
            settings: config.settings,
            image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
        }),
        ingested_lsn: store.last_lsn(),
        store,
        follower: WalFollower::new(
            config.timeline_id,
            config.safekeepers.clone(),
            config.segment_size_bytes,
        ),
        reader: PageReader::new(DEFAULT_IMAGE_THRESHOLD_DELTAS),
        decoder: None,
        segment_size_bytes: config.segment_size_bytes,
        stopped: None,
        last_flush: Instant::now(),
        pending: Vec::new(),
    };
    core.run(&job_queue, &shutdown)
}

fn open_or_seed(config: &PageserverConfig) -> Result<TimelineStore, PageserverError> {
    let dir = config.dir.join(config.timeline_id.to_string());
    let store_config = StoreConfig {
        image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
        ..StoreConfig::default()
    };
    let mut store = match TimelineStore::open(&dir, store_config.clone()) {
        Ok(store) => store,
        Err(StoreError::NotATimeline { .. }) => {
            let Some((_, base_lsn)) = &config.base else {
                return Err(PageserverError::NoBase { dir });
            };
            // Versions of the base are at base_lsn; the store's history starts below it.
            TimelineStore::create(&dir, Lsn(base_lsn.0 - 1), store_config)?
        }
        Err(e) => return Err(e.into()),
    };
    if let Some((base_dir, base_lsn)) = &config.base {
        // Also covers a crash between creating the store and flushing the import.
        if store.durable_lsn() < *base_lsn {
            let report = import_data_dir(&mut store, base_dir, *base_lsn)?;
            store.freeze(*base_lsn)?;
            store.flush()?;
            tracing::info!(lsn = %base_lsn, ?report, "imported the base data directory");
        }
    }
    Ok(store)
}

struct StoreThread {
    store: TimelineStore,
    ingester: Ingester,
    follower: WalFollower,
    /// Reads pages for GetPage, counting the deltas each replays (reported by
    /// `Status`) and noting pages whose chain exceeded the pushdown threshold.
    reader: PageReader,
    /// Created once the system id is known, at the store's last LSN (a record end).
    decoder: Option<WalStreamDecoder>,
    segment_size_bytes: u64,
    /// Every record ending at or below it is in the store.
    ingested_lsn: Lsn,
    /// Why ingest stopped, if it did: reads below `ingested_lsn` are still served.
    stopped: Option<String>,
    last_flush: Instant,
    pending: Vec<Job>,
}

impl StoreThread {
    fn run(
        &mut self,
        job_queue: &Receiver<Job>,
        shutdown: &AtomicBool,
    ) -> Result<(), PageserverError> {
        while !shutdown.load(Ordering::Relaxed) {
            while let Ok(job) = job_queue.try_recv() {
                self.pending.push(job);
            }
            self.answer_ready();
            // Pages a read found with a chain above the threshold get an image at the
            // next record (chains can exceed it after a restart: see `Ingester`).
            for key in self.reader.take_image_requests() {
                self.ingester.request_image(key);
            }
            let progressed = if self.stopped.is_none() {
                match self.ingest_step() {
                    Ok(progressed) => progressed,
                    Err(e) => {
                        tracing::error!("ingest stopped at {}: {e}", self.ingested_lsn);
                        self.stopped = Some(e);
                        false
                    }
                }
            } else {
                false
            };
            self.maybe_flush(false)?;
            if !progressed {
                match job_queue.recv_timeout(IDLE_WAIT) {
                    Ok(job) => self.pending.push(job),
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                }
            }
        }
        self.maybe_flush(true)?;
        tracing::info!(durable_lsn = %self.store.durable_lsn(), "pageserver stopped");
        Ok(())
    }

    /// Reads and ingests one chunk of committed WAL. `Ok(false)`: nothing new.
    fn ingest_step(&mut self) -> Result<bool, String> {
        if self.decoder.is_none() {
            self.follower.discover();
            let Some(system_id) = self.follower.system_id() else {
                return Ok(false);
            };
            let params = WalStreamParams::new(self.segment_size_bytes, Some(system_id))
                .map_err(|e| e.to_string())?;
            let start = self.store.last_lsn();
            let decoder = WalStreamDecoder::new(start, None, params)
                .map_err(|source| PageserverError::Decoder { lsn: start, source }.to_string())?;
            tracing::info!(%start, "following committed WAL");
            self.decoder = Some(decoder);
        }
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(false);
        };
        let from = decoder.position();
        let chunk = match self.follower.next_chunk(from) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => return Ok(false),
            Err(e) => return Err(e.to_string()),
        };
        let fed = decoder.feed(&chunk.wal);
        while let Some(raw) = decoder.next_raw_record() {
            let raw = raw.map_err(|e| format!("decoding a record: {e}"))?;
            self.ingester
                .ingest(&mut self.store, &raw)
                .map_err(|e| format!("ingesting the record at {}: {e}", raw.lsn))?;
            self.ingested_lsn = raw.end_lsn;
        }
        fed.map_err(|e| format!("WAL from {from} is not valid: {e}"))?;
        // Committed WAL ends at a record end, so a record still incomplete here ends
        // above the position: everything at or below it is ingested.
        self.ingested_lsn = self.ingested_lsn.max(decoder.position());
        Ok(true)
    }

    fn maybe_flush(&mut self, now: bool) -> Result<(), PageserverError> {
        let due = now
            || self.store.open_layer_bytes() > FLUSH_AT_BYTES
            || self.last_flush.elapsed() >= FLUSH_INTERVAL;
        if !due || self.store.last_lsn() <= self.store.durable_lsn() {
            return Ok(());
        }
        self.last_flush = Instant::now();
        self.store.freeze(self.store.last_lsn())?;
        self.store.flush()?;
        self.store.compact(&mut materializer())?;
        Ok(())
    }

    fn answer_ready(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let job = &self.pending[i];
            let response = match job.request.lsn() {
                None => Some(self.execute(&job.request)),
                Some(lsn) if lsn <= self.ingested_lsn => Some(self.execute(&job.request)),
                Some(lsn) => match &self.stopped {
                    Some(why) => Some(error(
                        ErrorCode::Internal,
                        format!(
                            "ingest stopped at {} below the requested LSN {lsn}: {why}",
                            self.ingested_lsn
                        ),
                    )),
                    None if now >= job.deadline => Some(error(
                        ErrorCode::Timeout,
                        format!(
                            "timed out after {} s waiting for WAL up to {lsn}: ingested up to {}",
                            REQUEST_WAIT.as_secs(),
                            self.ingested_lsn
                        ),
                    )),
                    None => None,
                },
            };
            match response {
                Some(response) => {
                    let job = self.pending.swap_remove(i);
                    // The connection may be gone; nothing to do then.
                    let _ = job.reply.send(response);
                }
                None => i += 1,
            }
        }
    }

    fn execute(&self, request: &Request) -> Response {
        let at = |r: &RelRequest| {
            if r.lsn == Lsn::INVALID {
                self.ingested_lsn
            } else {
                r.lsn
            }
        };
        let result = match request {
            Request::Status => {
                return Response::Status {
                    last_ingested_lsn: self.ingested_lsn,
                    durable_lsn: self.store.durable_lsn(),
                    getpage: GetPageStats {
                        threshold: DEFAULT_IMAGE_THRESHOLD_DELTAS,
                        metrics: self.reader.metrics(),
                    },
                };
            }
            Request::GetPage(r) => self
                .reader
                .get_page_at_lsn(&self.store, Key::rel_block(r.rel, r.fork, r.blk), at(r))
                .map(|page| {
                    let mut bytes = Box::new([0u8; BLCKSZ]);
                    bytes.copy_from_slice(page.as_bytes());
                    Response::Page(bytes)
                }),
            Request::RelSize(r) => {
                get_rel_size(&self.store, r.rel, r.fork, at(r)).map(Response::Size)
            }
            Request::RelExists(r) => {
                rel_exists(&self.store, r.rel, r.fork, at(r)).map(Response::Exists)
            }
        };
        result.unwrap_or_else(|e| {
            let code = match e {
                ReconstructError::RelationNotFound { .. } => ErrorCode::RelationNotFound,
                ReconstructError::BeyondEof { .. } => ErrorCode::BeyondEof,
                _ => ErrorCode::Internal,
            };
            error(code, e.to_string())
        })
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}

fn accept_loop(listener: TcpListener, jobs: SyncSender<Job>) {
    let connections = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                thread::sleep(IDLE_WAIT);
                continue;
            }
        };
        if connections.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            connections.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.write_all(&encode_response(&error(
                ErrorCode::Overloaded,
                format!("too many connections (limit {MAX_CONNECTIONS})"),
            )));
            continue;
        }
        let jobs = jobs.clone();
        let count = Arc::clone(&connections);
        let spawned = thread::Builder::new()
            .name("pageserver-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &jobs) {
                    tracing::debug!("connection ended: {e}");
                }
                count.fetch_sub(1, Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            connections.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("cannot start a connection thread: {e}");
        }
    }
}

/// Reads requests and hands them to the store thread; a writer thread writes the
/// responses in request order.
fn serve_connection(stream: TcpStream, jobs: &SyncSender<Job>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let write_half = stream.try_clone()?;
    let (in_flight, answers) = mpsc::sync_channel::<Receiver<Response>>(MAX_PIPELINED_REQUESTS);
    let writer = thread::Builder::new()
        .name("pageserver-write".into())
        .spawn(move || write_responses(write_half, answers))?;
    let mut reader = BufReader::new(&stream);
    loop {
        let (reply, answer) = mpsc::sync_channel(1);
        let request = match read_frame(&mut reader) {
            Ok((kind, body)) => decode_request(kind, &body),
            Err(ServiceProtocolError::Closed) => break,
            Err(e) => Err(e),
        };
        let last = matches!(&request, Err(e) if e.loses_framing());
        match request {
            Ok(request) => {
                let job = Job {
                    request,
                    deadline: Instant::now() + REQUEST_WAIT,
                    reply,
                };
                if let Err(mpsc::TrySendError::Full(job) | mpsc::TrySendError::Disconnected(job)) =
                    jobs.try_send(job)
                {
                    let _ = job.reply.send(error(
                        ErrorCode::Overloaded,
                        format!("{MAX_QUEUED_REQUESTS} requests are queued already"),
                    ));
                }
            }
            Err(e) => {
                let _ = reply.send(error(ErrorCode::BadRequest, e.to_string()));
            }
        }
        if in_flight.send(answer).is_err() || last {
            break;
        }
    }
    drop(in_flight);
    let _ = writer.join();
    let _ = stream.shutdown(std::net::Shutdown::Both);
    Ok(())
}

fn write_responses(stream: TcpStream, answers: Receiver<Receiver<Response>>) {
    let mut out = BufWriter::new(stream);
    while let Ok(answer) = answers.recv() {
        // The store thread answers every job by its deadline; the margin covers one
        // slow store operation.
        let response = answer.recv_timeout(REQUEST_WAIT * 3).unwrap_or_else(|_| {
            error(
                ErrorCode::Internal,
                "the store thread did not answer".into(),
            )
        });
        if out.write_all(&encode_response(&response)).is_err() {
            return;
        }
        // One flush per response: a client waiting for one page must not wait for
        // the next. Batching pipelined responses is a follow-up.
        if out.flush().is_err() {
            return;
        }
    }
}
