//! The pageserver role: serves every timeline in its directory (the first one seeded
//! from a base data directory, the others branches), partitioned across per-core
//! executors by branch tree (see [`super::cores`]). Connection threads decode frames,
//! hand each request to the core that serves its timeline and write the responses in
//! request order.
//!
//! A request waits (at most [`REQUEST_WAIT`]) until ingest reaches its LSN. Stores are
//! frozen and flushed every [`FLUSH_INTERVAL`] or [`FLUSH_AT_BYTES`]; after a restart,
//! ingest resumes from each timeline's durable LSN (a record boundary) and WAL above it
//! is read again.

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use tarn_io::{CoreMailbox, run_per_core_from};
use tarn_wal::{Lsn, TimelineId};

pub use super::cores::TimelineDirectory;
use super::cores::{Core, CoreConfig, Job, TimelineEntry, scan_timelines, timeline_dir};
use super::protocol::{
    ErrorCode, Response, ServiceProtocolError, TimelineInfo, decode_request, encode_response,
    read_frame,
};
use super::timeline::error;
pub use super::timeline::{FLUSH_AT_BYTES, FLUSH_INTERVAL, WalSource};
use crate::RedoSettings;
use crate::ingest::DEFAULT_IMAGE_THRESHOLD_DELTAS;
use crate::ingest::import::{ImportError, import_data_dir};
use crate::store::{StoreConfig, StoreError, TimelineStore};

/// How long a request waits for ingest to reach its LSN before it fails with
/// [`ErrorCode::Timeout`].
pub const REQUEST_WAIT: Duration = Duration::from_secs(10);
/// Requests queued for one core; beyond it a request fails with
/// [`ErrorCode::Overloaded`] instead of growing memory.
pub const MAX_QUEUED_REQUESTS: usize = 4096;
/// Requests in flight on one connection (read, not yet answered): the pipeline depth.
pub const MAX_PIPELINED_REQUESTS: usize = 128;
/// Concurrent client connections.
pub const MAX_CONNECTIONS: usize = 64;
/// The accept loop backs off this long after a failed accept (e.g. out of files).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Clone, Debug)]
pub struct PageserverConfig {
    /// The timeline seeded from `base` when the directory holds no timeline yet.
    pub timeline_id: TimelineId,
    pub safekeepers: Vec<SocketAddr>,
    /// Each timeline's store lives in `dir/<timeline id>`.
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// A cleanly shut down data directory and its checkpoint LSN, imported once when
    /// the store is new.
    pub base: Option<(PathBuf, Lsn)>,
    /// The cluster's settings at the base LSN.
    pub settings: RedoSettings,
    pub segment_size_bytes: u64,
    /// Executors (threads pinned to CPUs) the timelines are partitioned across.
    pub cores: usize,
    /// The allowed CPU the first executor is pinned to.
    pub first_cpu: usize,
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
    Runtime(#[from] tarn_io::IoError),
    #[error("core {core} failed: {source}")]
    Core { core: usize, source: StoreError },
}

fn store_config() -> StoreConfig {
    StoreConfig {
        image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
        ..StoreConfig::default()
    }
}

/// Runs the pageserver until `shutdown` is set; then flushes every store and returns.
pub fn run(config: PageserverConfig, shutdown: Arc<AtomicBool>) -> Result<(), PageserverError> {
    let cores = config.cores.max(1);
    std::fs::create_dir_all(&config.dir).map_err(|source| StoreError::Io {
        op: "create directory",
        path: config.dir.clone(),
        source,
    })?;
    seed_if_new(&config)?;
    let directory = Arc::new(TimelineDirectory::default());
    for (id, entry) in scan_timelines(&config.dir, cores)? {
        directory.insert(id, entry);
    }
    let listener = TcpListener::bind(config.listen).map_err(|source| PageserverError::Listen {
        addr: config.listen,
        source,
    })?;
    let (mailbox, sender) = CoreMailbox::<Job>::new(cores, MAX_QUEUED_REQUESTS)?;
    {
        let directory = Arc::clone(&directory);
        thread::Builder::new()
            .name("pageserver-accept".into())
            .spawn(move || accept_loop(listener, sender, directory))
            .map_err(|source| PageserverError::Listen {
                addr: config.listen,
                source,
            })?;
    }
    tracing::info!(listen = %config.listen, cores, timelines = directory.all().len(), "pageserver is serving");
    let core_config = CoreConfig {
        timelines_dir: config.dir.clone(),
        store: store_config(),
        settings: config.settings,
        source: WalSource {
            safekeepers: config.safekeepers.clone(),
            segment_size_bytes: config.segment_size_bytes,
        },
    };
    let results = run_per_core_from(config.first_cpu, cores, "pageserver", move |core| {
        let (core_config, directory, shutdown) = (
            core_config.clone(),
            Arc::clone(&directory),
            Arc::clone(&shutdown),
        );
        let receiver = mailbox.take_receiver(core);
        async move {
            let receiver = receiver.map_err(|e| StoreError::Io {
                op: "take the mailbox of",
                path: PathBuf::from(format!("core {}", core.0)),
                source: io::Error::other(e.to_string()),
            })?;
            let served = Core::open(core, core_config, directory)?;
            served.run(receiver, shutdown).await
        }
    })?;
    for (core, result) in results.into_iter().enumerate() {
        result.map_err(|source| PageserverError::Core { core, source })?;
    }
    Ok(())
}

/// Creates and seeds the first timeline from the base data directory when the
/// pageserver's directory holds none (or the import was interrupted).
fn seed_if_new(config: &PageserverConfig) -> Result<(), PageserverError> {
    let dir = timeline_dir(&config.dir, config.timeline_id);
    let mut store = match TimelineStore::open(&dir, store_config()) {
        Ok(store) => store,
        // A branch (or anything else) is not ours to seed.
        Err(StoreError::WrongAncestor { .. }) => return Ok(()),
        Err(StoreError::NotATimeline { .. }) => {
            let Some((_, base_lsn)) = &config.base else {
                if scan_timelines(&config.dir, 1)?.is_empty() {
                    return Err(PageserverError::NoBase { dir });
                }
                return Ok(());
            };
            // Versions of the base are at base_lsn; the store's history starts below it.
            TimelineStore::create(&dir, Lsn(base_lsn.0 - 1), store_config())?
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
    Ok(())
}

fn accept_loop(
    listener: TcpListener,
    mailbox: tarn_io::MailboxSender<Job>,
    directory: Arc<TimelineDirectory>,
) {
    let connections = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                thread::sleep(ACCEPT_BACKOFF);
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
        let router = Router {
            mailbox: mailbox.clone(),
            directory: Arc::clone(&directory),
        };
        let count = Arc::clone(&connections);
        let spawned = thread::Builder::new()
            .name("pageserver-conn".into())
            .spawn(move || {
                if let Err(e) = serve_connection(stream, &router) {
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

/// Hands each request to the core that serves its timeline.
struct Router {
    mailbox: tarn_io::MailboxSender<Job>,
    directory: Arc<TimelineDirectory>,
}

impl Router {
    fn route(&self, job: Job) {
        let Some(timeline) = job.request.timeline() else {
            let timelines = self
                .directory
                .all()
                .into_iter()
                .map(|(id, entry)| TimelineInfo {
                    id,
                    ancestor: entry.ancestor,
                })
                .collect();
            let _ = job.reply.send(Response::Timelines(timelines));
            return;
        };
        let Some(TimelineEntry { core, .. }) = self.directory.get(timeline) else {
            let _ = job.reply.send(error(
                ErrorCode::TimelineNotFound,
                format!("timeline {timeline} does not exist on this pageserver"),
            ));
            return;
        };
        if let Err(e) = self.mailbox.send(core, job) {
            let job = e.into_inner();
            let _ = job.reply.send(error(
                ErrorCode::Overloaded,
                format!(
                    "{MAX_QUEUED_REQUESTS} requests are queued for core {} already",
                    core.0
                ),
            ));
        }
    }
}

/// Reads requests and routes them to their cores; a writer thread writes the
/// responses in request order.
fn serve_connection(stream: TcpStream, router: &Router) -> io::Result<()> {
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
                router.route(Job {
                    request,
                    deadline: Instant::now() + REQUEST_WAIT,
                    reply,
                });
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
        // A request has one response, or (a basebackup) chunks and then a last one.
        loop {
            // A core answers every job by its deadline; the margin covers one slow
            // store operation.
            let response = answer.recv_timeout(REQUEST_WAIT * 3).unwrap_or_else(|_| {
                error(
                    ErrorCode::Internal,
                    "the pageserver core did not answer".into(),
                )
            });
            if out.write_all(&encode_response(&response)).is_err() {
                return;
            }
            if !response.continues() {
                break;
            }
        }
        // One flush per request: a client waiting for one page must not wait for the
        // next. Batching pipelined responses is a follow-up.
        if out.flush().is_err() {
            return;
        }
    }
}
