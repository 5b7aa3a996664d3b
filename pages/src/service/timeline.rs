//! One timeline as a core serves it: its store, the ingest of its committed WAL from
//! the safekeepers, periodic flush and compaction, and the answers to reads of it.
//!
//! A branch shares its ancestors' stores (`Rc`): the core that serves a timeline serves
//! its whole tree, so nothing here is `Send`.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use bytes::Bytes;

use tarn_wal::decode::WalStreamDecoder;
use tarn_wal::format::WalStreamParams;
use tarn_wal::{Lsn, TimelineId};

use super::follower::WalFollower;
use super::pitr::last_record_start;
use super::protocol::{
    BASEBACKUP_CHUNK_BYTES, ErrorCode, GetPageStats, RelRequest, Request, Response,
};
use crate::basebackup::{BasebackupError, BasebackupOptions, TarWriter, write_basebackup};
use crate::ingest::CheckpointState;
use crate::ingest::{DEFAULT_IMAGE_THRESHOLD_DELTAS, IngestConfig, Ingester};
use crate::reconstruct::{PageReader, ReconstructError, get_rel_size, materializer, rel_exists};
use crate::store::{Key, StoreError, TimelineStore};
use crate::{BLCKSZ, RedoSettings};

/// The store is made durable at least this often while WAL arrives.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// ... and whenever its open layer grows past this.
pub const FLUSH_AT_BYTES: usize = 32 << 20;

/// Where a served timeline's committed WAL comes from.
#[derive(Clone, Debug)]
pub struct WalSource {
    pub safekeepers: Vec<SocketAddr>,
    pub segment_size_bytes: u64,
}

pub(crate) struct ServedTimeline {
    id: TimelineId,
    store: Rc<RefCell<TimelineStore>>,
    ingester: Ingester,
    follower: WalFollower,
    /// Reads pages for GetPage, counting the deltas each replays (reported by
    /// `Status`) and noting pages whose chain exceeded the pushdown threshold.
    reader: PageReader,
    /// Created once the system id is known, at the store's last LSN (a record end).
    decoder: Option<WalStreamDecoder>,
    segment_size_bytes: u64,
    /// Where the WAL comes from (also read back to find a last record start).
    source: WalSource,
    /// Every record ending at or below it is in the store.
    ingested_lsn: Lsn,
    /// Where the last ingested record starts (since this process started): the
    /// xl_prev a compute booted at the end of the timeline's WAL must write.
    last_record_start: Option<Lsn>,
    /// Why ingest stopped, if it did: reads below `ingested_lsn` are still served.
    stopped: Option<String>,
    last_flush: Instant,
}

impl ServedTimeline {
    pub fn new(
        id: TimelineId,
        store: Rc<RefCell<TimelineStore>>,
        settings: RedoSettings,
        source: &WalSource,
    ) -> ServedTimeline {
        let ingested_lsn = store.borrow().last_lsn();
        ServedTimeline {
            id,
            store,
            ingester: Ingester::new(IngestConfig {
                settings,
                image_threshold_deltas: DEFAULT_IMAGE_THRESHOLD_DELTAS,
            }),
            follower: WalFollower::new(id, source.safekeepers.clone(), source.segment_size_bytes),
            reader: PageReader::new(DEFAULT_IMAGE_THRESHOLD_DELTAS),
            decoder: None,
            segment_size_bytes: source.segment_size_bytes,
            source: source.clone(),
            ingested_lsn,
            last_record_start: None,
            stopped: None,
            last_flush: Instant::now(),
        }
    }

    pub fn id(&self) -> TimelineId {
        self.id
    }

    pub fn store(&self) -> &Rc<RefCell<TimelineStore>> {
        &self.store
    }

    pub fn ingested_lsn(&self) -> Lsn {
        self.ingested_lsn
    }

    /// The settings ingest replays this timeline's WAL with (a branch inherits them).
    pub fn settings(&self) -> RedoSettings {
        self.ingester.settings()
    }

    /// Reads and ingests one chunk of committed WAL; `false`: nothing new (or ingest
    /// has stopped on an error, which is logged once and kept for the answers).
    pub fn ingest_step(&mut self) -> bool {
        if self.stopped.is_some() {
            return false;
        }
        for key in self.reader.take_image_requests() {
            self.ingester.request_image(key);
        }
        match self.try_ingest_step() {
            Ok(progressed) => progressed,
            Err(e) => {
                tracing::error!(timeline = %self.id, "ingest stopped at {}: {e}", self.ingested_lsn);
                self.stopped = Some(e);
                false
            }
        }
    }

    fn try_ingest_step(&mut self) -> Result<bool, String> {
        if self.decoder.is_none() {
            self.follower.discover();
            let Some(system_id) = self.follower.system_id() else {
                return Ok(false);
            };
            let params = WalStreamParams::new(self.segment_size_bytes, Some(system_id))
                .map_err(|e| e.to_string())?;
            let start = self.store.borrow().last_lsn();
            let decoder = WalStreamDecoder::new(start, None, params)
                .map_err(|e| format!("cannot decode WAL from {start}: {e}"))?;
            tracing::info!(timeline = %self.id, %start, "following committed WAL");
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
        let mut store = self
            .store
            .try_borrow_mut()
            .map_err(|_| "the store is borrowed by a read".to_string())?;
        while let Some(raw) = decoder.next_raw_record() {
            let raw = raw.map_err(|e| format!("decoding a record: {e}"))?;
            self.ingester
                .ingest(&mut store, &raw)
                .map_err(|e| format!("ingesting the record at {}: {e}", raw.lsn))?;
            self.ingested_lsn = raw.end_lsn;
            self.last_record_start = Some(raw.lsn);
        }
        fed.map_err(|e| format!("WAL from {from} is not valid: {e}"))?;
        // Committed WAL ends at a record end, so a record still incomplete here ends
        // above the position: everything at or below it is ingested.
        self.ingested_lsn = self.ingested_lsn.max(decoder.position());
        Ok(true)
    }

    /// Freezes, flushes and compacts when due (or `now`).
    pub fn maybe_flush(&mut self, now: bool) -> Result<(), StoreError> {
        let mut store = self.store.borrow_mut();
        let due = now
            || store.open_layer_bytes() > FLUSH_AT_BYTES
            || self.last_flush.elapsed() >= FLUSH_INTERVAL;
        if !due || store.last_lsn() <= store.durable_lsn() {
            return Ok(());
        }
        self.last_flush = Instant::now();
        let last = store.last_lsn();
        store.freeze(last)?;
        store.flush()?;
        drop(store);
        // Compaction of a branch reads its ancestors, which only borrow immutably.
        self.store.borrow_mut().compact(&mut materializer())?;
        Ok(())
    }

    /// The answer to `request` if it can be given now: `None` while ingest has not
    /// reached its LSN and `deadline` has not passed.
    pub fn answer(&self, request: &Request, now: Instant, deadline: Instant) -> Option<Response> {
        match request.lsn() {
            None => Some(self.execute(request)),
            Some(lsn) if lsn <= self.ingested_lsn => Some(self.execute(request)),
            Some(lsn) => match &self.stopped {
                Some(why) => Some(error(
                    ErrorCode::Internal,
                    format!(
                        "ingest of timeline {} stopped at {} below the requested LSN {lsn}: {why}",
                        self.id, self.ingested_lsn
                    ),
                )),
                None if now >= deadline => Some(error(
                    ErrorCode::Timeout,
                    format!(
                        "timed out waiting for WAL of timeline {} up to {lsn}: ingested up to {}",
                        self.id, self.ingested_lsn
                    ),
                )),
                None => None,
            },
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
        let Ok(store) = self.store.try_borrow() else {
            return error(ErrorCode::Internal, "the store is being written".into());
        };
        let result = match request {
            Request::Status { .. } => {
                return Response::Status {
                    last_ingested_lsn: self.ingested_lsn,
                    durable_lsn: store.durable_lsn(),
                    getpage: GetPageStats {
                        threshold: DEFAULT_IMAGE_THRESHOLD_DELTAS,
                        metrics: self.reader.metrics(),
                    },
                };
            }
            Request::GetPage(r) => self
                .reader
                .get_page_at_lsn(&store, Key::rel_block(r.rel, r.fork, r.blk), at(r))
                .map(|page| {
                    let mut bytes = Box::new([0u8; BLCKSZ]);
                    bytes.copy_from_slice(page.as_bytes());
                    Response::Page(bytes)
                }),
            Request::RelSize(r) => get_rel_size(&store, r.rel, r.fork, at(r)).map(Response::Size),
            Request::RelExists(r) => rel_exists(&store, r.rel, r.fork, at(r)).map(Response::Exists),
            // Routed elsewhere: the core creates branches and streams basebackups, the
            // router lists timelines.
            Request::CreateBranch { .. } | Request::Basebackup { .. } | Request::ListTimelines => {
                return error(
                    ErrorCode::BadRequest,
                    "not a request about one timeline's pages".into(),
                );
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

impl ServedTimeline {
    /// Streams a basebackup at `lsn` (`Lsn::INVALID`: the newest ingested) to `reply`
    /// as chunks; returns the last response.
    pub fn basebackup(&self, lsn: Lsn, reply: &SyncSender<Response>) -> Response {
        // Records start MAXALIGNed: the state at the aligned end is the state at the end.
        let end = self.ingested_lsn.max_align();
        let lsn = if lsn == Lsn::INVALID { end } else { lsn };
        if lsn > end {
            return error(
                ErrorCode::Timeout,
                format!(
                    "timed out waiting for WAL of timeline {} up to {lsn}: ingested up to {}",
                    self.id, self.ingested_lsn
                ),
            );
        }
        let Ok(store) = self.store.try_borrow() else {
            return error(ErrorCode::Internal, "the store is being written".into());
        };
        // A compute booted at the end of the timeline's WAL continues it, so its
        // first record must link to the real last one (safekeepers and Postgres check
        // xl_prev). A backup anywhere else starts a new timeline, where any earlier
        // record start will do.
        let at_end = lsn == end;
        let prev_record_lsn = if !at_end {
            None
        } else if let Some(start) = self.last_record_start {
            Some(start)
        } else if self.follower.system_id().is_some() {
            match self.find_last_record_start(&store, end) {
                Ok(start) => start,
                Err(e) => {
                    return error(
                        ErrorCode::Internal,
                        format!("finding the last record of {} before {end}: {e}", self.id),
                    );
                }
            }
        } else {
            // No WAL of its own on the safekeepers: a branch no compute wrote to yet,
            // whose first compute starts its timeline here.
            None
        };
        let options = BasebackupOptions {
            ingested_lsn: Some(end),
            prev_record_lsn,
            ..BasebackupOptions::default()
        };
        let mut tar = TarWriter::new(ChunkSender::new(reply), now_unix());
        let summary = match write_basebackup(&store, lsn, &options, &mut tar) {
            Ok(summary) => summary,
            Err(e @ BasebackupError::BeyondIngested { .. }) => {
                return error(
                    ErrorCode::BadRequest,
                    format!("basebackup of {} at {lsn}: {e}", self.id),
                );
            }
            Err(e) => {
                return error(
                    ErrorCode::Internal,
                    format!("basebackup of {} at {lsn}: {e}", self.id),
                );
            }
        };
        match tar.into_inner().finish() {
            Ok(()) => Response::BasebackupDone { lsn: summary.lsn },
            Err(e) => error(ErrorCode::Internal, format!("sending the basebackup: {e}")),
        }
    }
}

impl ServedTimeline {
    /// The start of the last record before `end`, read back from the safekeepers from
    /// the redo point of the checkpoint in force at `end` (a record start on this
    /// timeline's WAL, also for a branch, whose first record is its own checkpoint).
    fn find_last_record_start(
        &self,
        store: &TimelineStore,
        end: Lsn,
    ) -> Result<Option<Lsn>, String> {
        let data = store
            .get(Key::checkpoint(), end)
            .map_err(|e| e.to_string())?;
        let image = data
            .image
            .ok_or_else(|| "no checkpoint in the store".to_string())?;
        let checkpoint = CheckpointState::from_bytes(&image.1).map_err(|e| e.to_string())?;
        last_record_start(
            &self.source,
            self.id,
            checkpoint.redo(),
            end,
            LAST_RECORD_SCAN_TIMEOUT,
        )
        .map_err(|e| e.to_string())
    }
}

/// Bound on reading WAL back from the safekeepers to find the last record start.
const LAST_RECORD_SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// Cuts a byte stream into [`Response::BasebackupChunk`]s on a reply channel.
struct ChunkSender<'a> {
    reply: &'a SyncSender<Response>,
    buf: Vec<u8>,
}

impl<'a> ChunkSender<'a> {
    fn new(reply: &'a SyncSender<Response>) -> ChunkSender<'a> {
        ChunkSender {
            reply,
            buf: Vec::with_capacity(BASEBACKUP_CHUNK_BYTES),
        }
    }

    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(BASEBACKUP_CHUNK_BYTES),
        ));
        self.reply
            .send(Response::BasebackupChunk(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client is gone"))
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.send_buffered()
    }
}

impl std::io::Write for ChunkSender<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let room = BASEBACKUP_CHUNK_BYTES - self.buf.len();
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() == BASEBACKUP_CHUNK_BYTES {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn error(code: ErrorCode, message: String) -> Response {
    Response::Error { code, message }
}
