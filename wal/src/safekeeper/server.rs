//! The safekeeper process: a thread-per-core server. Core 0 accepts connections and
//! routes each to the core that owns its timeline (by timeline id), which keeps that
//! timeline's acceptor and WAL; cores share nothing but the status board that operator
//! queries read.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use tarn_io::{CoreIndex, CoreMailbox, MailboxSender, run_per_core_from};

use crate::protocol::{
    FRAME_HEADER_BYTES, Hello, MAX_APPEND_WAL_BYTES, ProposerMessage, ProtocolError, Refusal,
    SafekeeperMessage, StatusReply, TimelineStatus, WalChunk, decode_frame_header,
    decode_proposer_message, encode_safekeeper_message,
};
use crate::{NodeId, TimelineId};

use super::acceptor::{Acceptor, Reply, StorageOp};
use super::control::{ControlFileError, ControlState};
use super::storage::{StorageError, WalStorage};

/// A new connection must send its first frame within this time.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections waiting in a core's mailbox; beyond this, new connections are refused.
const MAILBOX_CAPACITY: usize = 1024;
/// Replies queued for one connection's writer before the handler waits.
const REPLY_QUEUE: usize = 1024;
/// The control file is rewritten at most this often for progress alone (terms and
/// votes are persisted at once), bounding how much WAL a restart scans.
const CONTROL_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct SafekeeperConfig {
    pub node_id: NodeId,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// Allowed CPU to pin the first executor to (see `tarn_io::run_per_core_from`).
    pub first_cpu: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SafekeeperError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("port {port} is in use: another process listens on {addr}")]
    PortInUse { addr: SocketAddr, port: u16 },
    #[error("cannot use data directory {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] tarn_io::IoError),
    #[error("core {core} failed: {detail}")]
    Core { core: usize, detail: String },
}

/// What every core publishes about its timelines, for status queries.
type StatusBoard = Arc<Mutex<BTreeMap<TimelineId, TimelineStatus>>>;

/// A connection handed from the accepting core to a timeline's owner.
struct RoutedConnection {
    fd: RawFd,
    hello: Hello,
}

/// Runs a safekeeper until the process is killed.
pub fn run(config: SafekeeperConfig) -> Result<(), SafekeeperError> {
    let timelines_dir = config.data_dir.join("timelines");
    std::fs::create_dir_all(&timelines_dir).map_err(|source| SafekeeperError::DataDir {
        dir: timelines_dir.clone(),
        source,
    })?;
    // Bound with std (no SO_REUSEPORT), so a port taken by anyone is an error here.
    let listener = StdTcpListener::bind(config.listen).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            SafekeeperError::PortInUse {
                addr: config.listen,
                port: config.listen.port(),
            }
        } else {
            SafekeeperError::Listen {
                addr: config.listen,
                source,
            }
        }
    })?;
    let listener_fd = listener.into_raw_fd();
    let cores = config.cores.max(1);
    let (mailbox, sender) = CoreMailbox::<RoutedConnection>::new(cores, MAILBOX_CAPACITY)?;
    let mailbox = Arc::new(mailbox);
    let board: StatusBoard = Arc::default();
    tracing::info!(
        node = config.node_id.0,
        listen = %config.listen,
        dir = %config.data_dir.display(),
        cores,
        "safekeeper starting"
    );
    let first_cpu = config.first_cpu;
    let results = run_per_core_from(first_cpu, cores, "safekeeper", move |core| {
        let config = config.clone();
        let mailbox = mailbox.clone();
        let sender = sender.clone();
        let board = board.clone();
        async move { core_main(core, cores, config, mailbox, sender, board, listener_fd).await }
    })?;
    for (core, r) in results.into_iter().enumerate() {
        r.map_err(|detail| SafekeeperError::Core { core, detail })?;
    }
    Ok(())
}

fn owner_core(timeline: TimelineId, cores: usize) -> usize {
    // Timeline ids are random, so their low bits spread evenly.
    (timeline.0 % cores as u128) as usize
}

struct CoreState {
    node_id: NodeId,
    timelines_dir: PathBuf,
    timelines: RefCell<HashMap<TimelineId, Rc<Timeline>>>,
    /// Serialises timeline creation, so two first connections don't both create one.
    creating: Semaphore,
    board: StatusBoard,
}

async fn core_main(
    core: CoreIndex,
    cores: usize,
    config: SafekeeperConfig,
    mailbox: Arc<CoreMailbox<RoutedConnection>>,
    sender: MailboxSender<RoutedConnection>,
    board: StatusBoard,
    listener_fd: RawFd,
) -> Result<(), String> {
    let state = Rc::new(CoreState {
        node_id: config.node_id,
        timelines_dir: config.data_dir.join("timelines"),
        timelines: RefCell::default(),
        creating: Semaphore::new(1),
        board,
    });
    load_owned_timelines(&state, core.0, cores).await?;
    let mut inbox = mailbox.take_receiver(core).map_err(|e| e.to_string())?;
    if core.0 == 0 {
        // SAFETY: the fd came from `into_raw_fd` of a listener nobody else owns, and
        // only core 0 takes ownership of it.
        let listener = unsafe { TcpListener::from_raw_fd(listener_fd) };
        let accept_state = state.clone();
        glommio::spawn_local(accept_loop(listener, accept_state, cores, sender)).detach();
    }
    while let Some(routed) = inbox.recv().await {
        // SAFETY: the accepting core duplicated this fd for us and gave up its copy.
        let stream = unsafe { TcpStream::from_raw_fd(routed.fd) };
        let st = state.clone();
        glommio::spawn_local(async move {
            if let Err(e) = serve_connection(st, stream, routed.hello).await {
                tracing::debug!("connection ended: {e}");
            }
        })
        .detach();
    }
    Ok(())
}

async fn load_owned_timelines(
    state: &Rc<CoreState>,
    core: usize,
    cores: usize,
) -> Result<(), String> {
    let entries = std::fs::read_dir(&state.timelines_dir)
        .map_err(|e| format!("cannot list {}: {e}", state.timelines_dir.display()))?;
    for entry in entries {
        let entry =
            entry.map_err(|e| format!("cannot list {}: {e}", state.timelines_dir.display()))?;
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<TimelineId>().ok())
        else {
            continue;
        };
        if owner_core(id, cores) != core {
            continue;
        }
        let dir = entry.path();
        match ControlState::load(&dir) {
            Ok(Some(control)) => {
                let timeline = Timeline::open(state, dir, control)
                    .await
                    .map_err(|e| e.to_string())?;
                state.timelines.borrow_mut().insert(id, timeline);
            }
            Ok(None) => tracing::warn!("{} has no control file; ignoring it", dir.display()),
            // A corrupt control file holds promises we can no longer prove: refuse
            // to start rather than vote again in a term we may have voted in.
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    state: Rc<CoreState>,
    cores: usize,
    sender: MailboxSender<RoutedConnection>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                continue;
            }
        };
        let st = state.clone();
        let sender = sender.clone();
        glommio::spawn_local(async move {
            if let Err(e) = route_connection(stream, st, cores, sender).await {
                tracing::info!("refused a connection: {e}");
            }
        })
        .detach();
    }
}

async fn route_connection(
    mut stream: TcpStream,
    state: Rc<CoreState>,
    cores: usize,
    sender: MailboxSender<RoutedConnection>,
) -> Result<(), String> {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(FIRST_FRAME_TIMEOUT));
    let first = match read_message(&mut stream).await {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(()),
        Err(e) => {
            let reason = format!("{e}");
            refuse(&mut stream, &reason).await;
            return Err(format!("{peer}: {reason}"));
        }
    };
    let _ = stream.set_read_timeout(None);
    match first {
        ProposerMessage::Status => {
            let timelines = state
                .board
                .lock()
                .map(|b| b.values().cloned().collect())
                .unwrap_or_default();
            let reply = SafekeeperMessage::Status(StatusReply {
                node_id: state.node_id,
                timelines,
            });
            let _ = stream.write_all(&encode_safekeeper_message(&reply)).await;
            Ok(())
        }
        ProposerMessage::Hello(hello) => {
            let owner = owner_core(hello.timeline_id, cores);
            if owner == 0 {
                return serve_connection(state, stream, hello).await;
            }
            // Hand a duplicate of the socket to the owner; ours closes when dropped.
            // SAFETY: dup of a valid open fd; the owner wraps the copy exactly once.
            let fd = unsafe { libc::dup(stream.as_raw_fd()) };
            if fd < 0 {
                return Err(format!(
                    "{peer}: cannot hand over the connection: {}",
                    std::io::Error::last_os_error()
                ));
            }
            if let Err(e) = sender.send(CoreIndex(owner), RoutedConnection { fd, hello }) {
                // SAFETY: the send failed, so we still own the duplicate.
                unsafe { libc::close(fd) };
                refuse(&mut stream, "safekeeper is overloaded").await;
                return Err(format!("{peer}: {e}"));
            }
            Ok(())
        }
        other => {
            let reason = format!(
                "expected Hello or Status as the first message, got {}",
                message_name(&other)
            );
            refuse(&mut stream, &reason).await;
            Err(format!("{peer}: {reason}"))
        }
    }
}

async fn refuse(stream: &mut (impl AsyncWriteExt + Unpin), reason: &str) {
    let msg = SafekeeperMessage::Refused(Refusal {
        term: Default::default(),
        reason: reason.to_string(),
    });
    let _ = stream.write_all(&encode_safekeeper_message(&msg)).await;
    let _ = stream.flush().await;
}

#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one message; `Ok(None)` if the peer closed between frames.
async fn read_message(
    r: &mut (impl AsyncReadExt + Unpin),
) -> Result<Option<ProposerMessage>, FrameError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut got = 0;
    while got < header.len() {
        let n = r.read(&mut header[got..]).await?;
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(FrameError::Protocol(ProtocolError::Truncated {
                message: "incoming",
                field: "header",
                needed: FRAME_HEADER_BYTES,
                remaining: got,
            }));
        }
        got += n;
    }
    let h = decode_frame_header(&header)?;
    let mut body = BytesMut::zeroed(h.body_len);
    // Counted by hand rather than with read_exact, so a refusal says how much of the
    // promised body arrived.
    let mut got = 0;
    while got < body.len() {
        let n = r.read(&mut body[got..]).await?;
        if n == 0 {
            return Err(FrameError::Protocol(ProtocolError::Truncated {
                message: "incoming",
                field: "body",
                needed: h.body_len,
                remaining: got,
            }));
        }
        got += n;
    }
    Ok(Some(decode_proposer_message(h.kind, body.freeze())?))
}

fn message_name(m: &ProposerMessage) -> &'static str {
    match m {
        ProposerMessage::Hello(_) => "Hello",
        ProposerMessage::VoteRequest(_) => "VoteRequest",
        ProposerMessage::Elected(_) => "Elected",
        ProposerMessage::Append(_) => "Append",
        ProposerMessage::ReadWal(_) => "ReadWal",
        ProposerMessage::Status => "Status",
    }
}

type Replies = Rc<LocalSender<SafekeeperMessage>>;

async fn serve_connection(
    state: Rc<CoreState>,
    stream: TcpStream,
    hello: Hello,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (replies, replies_rx) = local_channel::new_bounded::<SafekeeperMessage>(REPLY_QUEUE);
    let replies = Rc::new(replies);
    let writer_task = glommio::spawn_local(write_replies(writer, replies_rx));
    let result = serve_messages(&state, &mut reader, &replies, hello).await;
    if let Err(reason) = &result {
        let refusal = SafekeeperMessage::Refused(Refusal {
            term: Default::default(),
            reason: reason.clone(),
        });
        let _ = replies.try_send(refusal);
    }
    drop(replies);
    writer_task.await;
    result
}

async fn write_replies(
    mut writer: WriteHalf<TcpStream>,
    replies: local_channel::LocalReceiver<SafekeeperMessage>,
) {
    while let Some(msg) = replies.recv().await {
        if writer
            .write_all(&encode_safekeeper_message(&msg))
            .await
            .is_err()
        {
            return;
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
    let _ = writer.close().await;
}

async fn serve_messages(
    state: &Rc<CoreState>,
    reader: &mut ReadHalf<TcpStream>,
    replies: &Replies,
    hello: Hello,
) -> Result<(), String> {
    let timeline = get_or_create_timeline(state, &hello).await?;
    let refused = timeline
        .handle(ProposerMessage::Hello(hello), replies)
        .await?;
    if refused {
        return Ok(());
    }
    loop {
        let msg = match read_message(reader).await {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(FrameError::Io(e)) => return Err(format!("connection failed: {e}")),
            Err(FrameError::Protocol(e)) => return Err(e.to_string()),
        };
        if matches!(msg, ProposerMessage::Hello(_) | ProposerMessage::Status) {
            return Err(format!(
                "{} is only valid as a connection's first message",
                message_name(&msg)
            ));
        }
        if timeline.handle(msg, replies).await? {
            // A refusal ends the connection: the proposer reconnects and starts over
            // from a known state.
            return Ok(());
        }
    }
}

async fn get_or_create_timeline(
    state: &Rc<CoreState>,
    hello: &Hello,
) -> Result<Rc<Timeline>, String> {
    if let Some(t) = state.timelines.borrow().get(&hello.timeline_id) {
        return Ok(t.clone());
    }
    let _permit = state
        .creating
        .acquire_permit(1)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(t) = state.timelines.borrow().get(&hello.timeline_id) {
        return Ok(t.clone());
    }
    let dir = state.timelines_dir.join(hello.timeline_id.to_string());
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let acceptor = Acceptor::create(state.node_id, hello);
    let control = acceptor.control().clone();
    persist_control(&dir, &control)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(timeline = %hello.timeline_id, system_id = hello.system_id.0, "created timeline");
    let timeline = Timeline::open(state, dir, control)
        .await
        .map_err(|e| e.to_string())?;
    state
        .timelines
        .borrow_mut()
        .insert(hello.timeline_id, timeline.clone());
    Ok(timeline)
}

async fn persist_control(dir: &Path, control: &ControlState) -> Result<(), ControlFileError> {
    let dir = dir.to_path_buf();
    let control = control.clone();
    // Rename and fsyncs block; keep them off the executor's thread.
    glommio::executor()
        .spawn_blocking(move || control.persist(&dir))
        .await
}

/// One timeline on its owning core.
struct Timeline {
    id: TimelineId,
    dir: PathBuf,
    acceptor: RefCell<Acceptor>,
    storage: WalStorage,
    /// Serialises message handling: the acceptor's decisions and their storage
    /// operations happen in arrival order.
    lock: Semaphore,
    /// Connections waiting for the next flush to be acknowledged.
    waiters: RefCell<Vec<Replies>>,
    flush_requests: LocalSender<()>,
    /// Set when storage failed: the acceptor's memory may be ahead of its disk, so the
    /// timeline refuses everything until the safekeeper restarts and recovers.
    failed: RefCell<Option<String>>,
    last_checkpoint: Cell<Instant>,
    board: StatusBoard,
}

impl Timeline {
    async fn open(
        state: &Rc<CoreState>,
        dir: PathBuf,
        control: ControlState,
    ) -> Result<Rc<Timeline>, StorageError> {
        let (storage, end) = WalStorage::open(&dir, &control).await?;
        let id = control.timeline_id;
        let acceptor = Acceptor::recover(state.node_id, control, end);
        let (flush_requests, flush_rx) = local_channel::new_bounded::<()>(1);
        let timeline = Rc::new(Timeline {
            id,
            dir,
            acceptor: RefCell::new(acceptor),
            storage,
            lock: Semaphore::new(1),
            waiters: RefCell::default(),
            flush_requests,
            failed: RefCell::new(None),
            last_checkpoint: Cell::new(Instant::now()),
            board: state.board.clone(),
        });
        timeline.publish();
        let flusher = timeline.clone();
        glommio::spawn_local(async move {
            while flush_rx.recv().await.is_some() {
                flusher.flush_round().await;
            }
        })
        .detach();
        Ok(timeline)
    }

    fn publish(&self) {
        let status = self.acceptor.borrow().status();
        if let Ok(mut board) = self.board.lock() {
            board.insert(self.id, status);
        }
    }

    fn fail(&self, what: String) -> String {
        tracing::error!(timeline = %self.id, dir = %self.dir.display(), "{what}; refusing this timeline until restart");
        *self.failed.borrow_mut() = Some(what.clone());
        what
    }

    /// Handles one message; returns whether it was refused (which ends the connection).
    async fn handle(&self, msg: ProposerMessage, replies: &Replies) -> Result<bool, String> {
        let _permit = self
            .lock
            .acquire_permit(1)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(why) = self.failed.borrow().clone() {
            return Err(format!(
                "timeline {} is unavailable after a storage failure: {why}",
                self.id
            ));
        }
        let step = {
            match &msg {
                ProposerMessage::Hello(h) => self.acceptor.borrow().handle_hello(h),
                ProposerMessage::VoteRequest(v) => {
                    self.acceptor.borrow_mut().handle_vote_request(v)
                }
                ProposerMessage::Elected(e) => self.acceptor.borrow_mut().handle_elected(e),
                ProposerMessage::Append(r) => self.acceptor.borrow_mut().handle_append(r),
                ProposerMessage::ReadWal(r) => {
                    let read = self.acceptor.borrow().check_read(r, MAX_APPEND_WAL_BYTES);
                    let reply = match read {
                        Ok((start, len)) => match self.storage.read_verified(start, len).await {
                            Ok(wal) => SafekeeperMessage::WalChunk(WalChunk {
                                start_lsn: start,
                                wal: Bytes::from(wal),
                            }),
                            Err(e) => return Err(self.fail(format!("reading WAL at {start}: {e}"))),
                        },
                        Err(refusal) => SafekeeperMessage::Refused(refusal),
                    };
                    let refused = matches!(reply, SafekeeperMessage::Refused(_));
                    send(replies, reply).await;
                    return Ok(refused);
                }
                ProposerMessage::Status => unreachable_status(),
            }
        };
        for op in step.ops {
            let result = match op {
                StorageOp::PersistControl(c) => persist_control(&self.dir, &c)
                    .await
                    .map_err(|e| e.to_string()),
                StorageOp::TruncateWal(lsn) => {
                    self.storage.truncate(lsn).await.map_err(|e| e.to_string())
                }
                StorageOp::WriteWal { lsn, wal } => match self.storage.write(lsn, &wal).await {
                    Ok(()) => Ok(()),
                    Err(StorageError::InvalidWal { lsn, source }) => {
                        // The proposer sent bytes that are not WAL: nothing of them is
                        // acknowledged; stop this timeline before anything depends on them.
                        Err(format!("invalid WAL received at {lsn}: {source}"))
                    }
                    Err(e) => Err(e.to_string()),
                },
            };
            if let Err(what) = result {
                return Err(self.fail(what));
            }
        }
        self.publish();
        match step.reply {
            Reply::Now(m) => {
                let refused = matches!(m, SafekeeperMessage::Refused(_));
                if let SafekeeperMessage::Refused(r) = &m {
                    tracing::info!(timeline = %self.id, "refused: {}", r.reason);
                }
                send(replies, m).await;
                Ok(refused)
            }
            Reply::AfterFlush => {
                self.waiters.borrow_mut().push(replies.clone());
                // A full queue means a round is already requested.
                let _ = self.flush_requests.try_send(());
                Ok(false)
            }
        }
    }

    /// One group-commit round: everything written before it starts becomes durable
    /// with one write and one fdatasync, then every waiting connection is answered.
    async fn flush_round(&self) {
        let waiters = {
            let Ok(_permit) = self.lock.acquire_permit(1).await else {
                return;
            };
            std::mem::take(&mut *self.waiters.borrow_mut())
        };
        let prepared = self.storage.prepare_flush();
        let flushed = self.storage.sync().await;
        let Ok(_permit) = self.lock.acquire_permit(1).await else {
            return;
        };
        let msg = match flushed {
            Ok(()) if self.storage.still_valid(&prepared) => {
                self.acceptor.borrow_mut().on_flushed(prepared.record_end)
            }
            Ok(()) => self.acceptor.borrow().current_append_response(),
            Err(e) => {
                let why = self.fail(format!("flushing WAL failed: {e}"));
                for w in waiters {
                    let _ = w.try_send(SafekeeperMessage::Refused(Refusal {
                        term: Default::default(),
                        reason: why.clone(),
                    }));
                }
                return;
            }
        };
        self.publish();
        // Answer first: the control checkpoint below only shortens a future restart's
        // scan, so it must not sit on the commit path.
        for w in waiters {
            send(&w, msg.clone()).await;
        }
        if self.last_checkpoint.get().elapsed() >= CONTROL_CHECKPOINT_INTERVAL {
            self.last_checkpoint.set(Instant::now());
            let checkpoint = self.acceptor.borrow().control_to_checkpoint();
            if let Some(c) = checkpoint {
                match persist_control(&self.dir, &c).await {
                    Ok(()) => self.acceptor.borrow_mut().control_persisted(&c),
                    Err(e) => {
                        self.fail(format!("checkpointing the control file failed: {e}"));
                    }
                }
            }
        }
    }
}

fn unreachable_status() -> super::acceptor::Step {
    // Status is answered by the accepting core and never reaches a timeline; treat a
    // stray one as a refusal rather than trusting that.
    super::acceptor::Step {
        ops: Vec::new(),
        reply: Reply::Now(SafekeeperMessage::Refused(Refusal {
            term: Default::default(),
            reason: "Status is only valid as a connection's first message".into(),
        })),
    }
}

async fn send(replies: &Replies, msg: SafekeeperMessage) {
    // The writer task drains this queue; if the connection is gone, so is the reply.
    let _ = replies.send(msg).await;
}
