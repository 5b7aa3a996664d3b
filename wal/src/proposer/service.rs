//! The proposer process: wires the pure [`Proposer`] core to Postgres (a physical
//! replication stream, as its synchronous standby) and to the safekeepers (one TCP
//! connection each). Blocking threads feed one event loop that owns the core, so all
//! protocol decisions happen on one thread in the order events arrived.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::protocol::blocking::read_safekeeper_message;
use crate::protocol::{SafekeeperMessage, encode_proposer_message};
use crate::replication::{
    IdentifySystem, ReplicationClient, ReplicationConfig, ReplicationError, ReplicationEvent,
    ReplicationWriter,
};
use crate::{Lsn, TimelineId};

use super::core::{PeerIndex, Phase, Proposer, ProposerMode, ProposerOutput, ProposerSettings};

/// The Postgres major version tarn's WAL handling is written for.
pub const SUPPORTED_POSTGRES_MAJOR: u32 = 15;
/// Postgres 15's default (and Debian's) WAL segment size; tarn requires it.
pub const POSTGRES_SEGMENT_SIZE_BYTES: u64 = 16 << 20;
/// How often the event loop wakes without events, to run timers.
pub(super) const TICK: Duration = Duration::from_millis(50);
/// Status updates keep the walsender from timing us out (wal_sender_timeout is 60 s by
/// default) and keep pg_stat_replication current.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
const STATE_FILE_INTERVAL: Duration = Duration::from_millis(500);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Reconnection attempts back off up to this, so a returning peer is found quickly.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Commands queued for one safekeeper connection before the sender blocks.
const LINK_QUEUE_FRAMES: usize = 4096;
/// How often a paused replication reader checks whether it may read again.
const BACKPRESSURE_POLL: Duration = Duration::from_millis(2);
/// A pause this long is worth telling the operator about.
const BACKPRESSURE_WARN_AFTER: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ProposerConfig {
    /// libpq-style connection string of the Postgres primary.
    pub postgres: String,
    /// `host:port` of each safekeeper.
    pub safekeepers: Vec<String>,
    pub timeline_id: TimelineId,
    /// Must be listed in Postgres's `synchronous_standby_names`.
    pub application_name: String,
    /// Where to publish the proposer's state as JSON for `tarn status`.
    pub state_file: Option<PathBuf>,
    /// Where a timeline the safekeepers do not hold yet starts: the LSN of the first
    /// record of a compute booted from a basebackup (a branch). `None`: the start of
    /// the segment holding Postgres's current position (a cluster fresh from initdb,
    /// whose `pg_wal` holds that whole segment).
    pub timeline_start: Option<Lsn>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProposerError {
    #[error("invalid Postgres connection string: {0}")]
    Config(ReplicationError),
    #[error("proposer stopped: {0}")]
    Stopped(String),
    #[error(
        "Postgres at {connstr} is database system {found}, but this timeline belongs to system {expected}"
    )]
    WrongSystem {
        connstr: String,
        found: u64,
        expected: u64,
    },
    #[error("need at least one safekeeper")]
    NoSafekeepers,
    #[error(
        "Postgres reports version {version:?}; tarn supports PostgreSQL {SUPPORTED_POSTGRES_MAJOR}"
    )]
    UnsupportedPostgres { version: String },
    /// Sync-safekeepers found no WAL of the timeline on a majority: nothing was ever
    /// committed on it, so a compute boots from where the timeline branched instead.
    #[error(
        "timeline {timeline_id} holds no WAL: a majority of safekeepers answered and none has any"
    )]
    EmptyTimeline { timeline_id: TimelineId },
    #[error("sync-safekeepers of timeline {timeline_id} gave up after {timeout:?}: {detail}")]
    SyncTimeout {
        timeline_id: TimelineId,
        timeout: Duration,
        detail: String,
    },
}

pub(super) enum Event {
    SkConnected {
        peer: PeerIndex,
        generation: u64,
        commands: mpsc::SyncSender<LinkCommand>,
    },
    SkMessage {
        peer: PeerIndex,
        generation: u64,
        msg: SafekeeperMessage,
    },
    SkDisconnected {
        peer: PeerIndex,
        generation: u64,
        reason: String,
    },
    /// A connection attempt failed (the link keeps trying).
    SkUnreachable {
        peer: PeerIndex,
        reason: String,
    },
    PgStreaming {
        session: u64,
        writer: ReplicationWriter,
    },
    PgWal {
        session: u64,
        start: Lsn,
        data: Bytes,
    },
    PgKeepalive {
        session: u64,
        reply_requested: bool,
    },
    PgEnded {
        session: u64,
        reason: String,
    },
}

pub(super) enum LinkCommand {
    Send(Bytes),
    Close,
}

/// Sends `msg` to safekeeper `to`; a link whose thread is gone is a disconnect.
pub(super) fn send_to_link(
    links: &mut [Option<Link>],
    core: &mut Proposer,
    to: PeerIndex,
    msg: &crate::protocol::ProposerMessage,
) {
    if let Some(link) = &links[to]
        && link
            .commands
            .send(LinkCommand::Send(encode_proposer_message(msg)))
            .is_err()
    {
        links[to] = None;
        core.on_disconnected(to);
    }
}

/// Drops the link to safekeeper `peer` (the core asked for a new connection).
pub(super) fn close_link(links: &mut [Option<Link>], peer: PeerIndex) {
    if let Some(link) = links[peer].take() {
        let _ = link.commands.try_send(LinkCommand::Close);
    }
}

pub(super) struct Link {
    pub(super) generation: u64,
    pub(super) commands: mpsc::SyncSender<LinkCommand>,
}

/// Runs the proposer until it loses its term (an error saying why) or the process is
/// killed.
pub fn run(config: ProposerConfig) -> Result<(), ProposerError> {
    if config.safekeepers.is_empty() {
        return Err(ProposerError::NoSafekeepers);
    }
    // The proposer's application_name is what synchronous_standby_names lists, so it
    // comes from the proposer's own setting unless the connection string sets one.
    let connstr = if config.postgres.contains("application_name") {
        config.postgres.clone()
    } else {
        format!(
            "{} application_name={}",
            config.postgres, config.application_name
        )
    };
    let pg_config = ReplicationConfig::parse(&connstr).map_err(ProposerError::Config)?;
    let (identity, pg_version) = identify_with_retry(&pg_config)?;
    tracing::info!(
        system_id = identity.system_id.0,
        xlogpos = %identity.xlogpos,
        "connected to Postgres; campaigning among {} safekeepers",
        config.safekeepers.len()
    );
    let settings = ProposerSettings {
        system_id: identity.system_id,
        timeline_id: config.timeline_id,
        pg_version,
        segment_size_bytes: POSTGRES_SEGMENT_SIZE_BYTES,
        // A new timeline starts at the segment holding Postgres's current position, so
        // the safekeepers' segments line up byte for byte with pg_wal; a compute booted
        // from a basebackup has WAL only from its checkpoint record on.
        initial_timeline_start: config.timeline_start.unwrap_or(Lsn(
            identity.xlogpos.0 - identity.xlogpos.0 % POSTGRES_SEGMENT_SIZE_BYTES
        )),
        safekeeper_count: config.safekeepers.len(),
        max_in_flight_bytes: 16 << 20,
        max_buffered_wal_bytes: 256 << 20,
        progress_timeout_ms: 10_000,
        election_timeout_ms: 30_000,
        mode: ProposerMode::Stream,
    };
    let started = Instant::now();
    let mut core = Proposer::new(settings, 0);
    let (events_tx, events) = mpsc::channel::<Event>();
    // The proposer runs until the process ends, and its links with it.
    spawn_links(
        &config.safekeepers,
        &events_tx,
        &Arc::new(AtomicBool::new(false)),
    )?;
    let accepting_wal = Arc::new(AtomicBool::new(true));
    let mut event_loop = EventLoop {
        accepting_wal,
        config,
        pg_config,
        identity,
        links: (0..core.peer_flush_lsns().len()).map(|_| None).collect(),
        events_tx,
        pg_session: 0,
        pg_writer: None,
        pg_received: Lsn::INVALID,
        reported_flush: Lsn::INVALID,
        last_status: Instant::now(),
        last_state_file: Instant::now() - STATE_FILE_INTERVAL,
        started,
    };
    event_loop.run(&mut core, &events)
}

/// Starts one link thread per safekeeper; they end soon after `stop` is set.
pub(super) fn spawn_links(
    safekeepers: &[String],
    events: &Sender<Event>,
    stop: &Arc<AtomicBool>,
) -> Result<(), ProposerError> {
    for (peer, addr) in safekeepers.iter().enumerate() {
        let tx = events.clone();
        let addr = addr.clone();
        let stop = stop.clone();
        thread::Builder::new()
            .name(format!("sk-link-{peer}"))
            .spawn(move || link_thread(peer, addr, tx, &stop))
            .map_err(|e| ProposerError::Stopped(format!("cannot start a thread: {e}")))?;
    }
    Ok(())
}

/// Connects until Postgres answers IDENTIFY_SYSTEM; returns its identity and version
/// (PG_VERSION_NUM, e.g. 150018).
fn identify_with_retry(cfg: &ReplicationConfig) -> Result<(IdentifySystem, u32), ProposerError> {
    let mut backoff = BACKOFF_MIN;
    loop {
        let attempt = ReplicationClient::connect(cfg, CONNECT_TIMEOUT).and_then(|mut c| {
            let id = c.identify_system()?;
            Ok((id, c.server_parameter("server_version").map(str::to_string)))
        });
        match attempt {
            Ok((id, version)) => {
                let version = version.unwrap_or_default();
                let version_num = parse_server_version(&version).ok_or_else(|| {
                    ProposerError::UnsupportedPostgres {
                        version: version.clone(),
                    }
                })?;
                if version_num / 10000 != SUPPORTED_POSTGRES_MAJOR {
                    return Err(ProposerError::UnsupportedPostgres { version });
                }
                return Ok((id, version_num));
            }
            Err(e) => {
                tracing::warn!(
                    "cannot reach Postgres at {}:{} ({e}); retrying in {backoff:?}",
                    cfg.host,
                    cfg.port
                );
                thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// "15.18 (Debian 15.18-0+deb12u1)" → 150018, as PG_VERSION_NUM.
fn parse_server_version(text: &str) -> Option<u32> {
    let number = text.split_whitespace().next()?;
    let mut parts = number.split('.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some(major * 10000 + minor)
}

struct EventLoop {
    /// Cleared while the proposer holds as much unreplicated WAL as it may: the
    /// replication reader then stops reading, and TCP pushes back on Postgres.
    accepting_wal: Arc<AtomicBool>,
    config: ProposerConfig,
    pg_config: ReplicationConfig,
    identity: IdentifySystem,
    links: Vec<Option<Link>>,
    events_tx: Sender<Event>,
    pg_session: u64,
    pg_writer: Option<ReplicationWriter>,
    /// End of WAL received from Postgres in the current streaming session.
    pg_received: Lsn,
    reported_flush: Lsn,
    last_status: Instant,
    last_state_file: Instant,
    started: Instant,
}

impl EventLoop {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn run(&mut self, core: &mut Proposer, events: &Receiver<Event>) -> Result<(), ProposerError> {
        loop {
            match events.recv_timeout(TICK) {
                Ok(event) => self.handle(core, event)?,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ProposerError::Stopped(
                        "all connection threads ended".into(),
                    ));
                }
            }
            core.on_tick(self.now_ms());
            self.apply_outputs(core)?;
            self.accepting_wal
                .store(core.accepts_wal(), Ordering::Release);
            if self.last_status.elapsed() >= STATUS_INTERVAL {
                self.send_status(core, false);
            }
            if self.last_state_file.elapsed() >= STATE_FILE_INTERVAL {
                self.write_state_file(core);
            }
        }
    }

    fn handle(&mut self, core: &mut Proposer, event: Event) -> Result<(), ProposerError> {
        match event {
            Event::SkConnected {
                peer,
                generation,
                commands,
            } => {
                tracing::info!(
                    "connected to safekeeper #{peer} ({})",
                    self.config.safekeepers[peer]
                );
                self.links[peer] = Some(Link {
                    generation,
                    commands,
                });
                core.on_connected(peer);
            }
            Event::SkMessage {
                peer,
                generation,
                msg,
            } => {
                if self.links[peer]
                    .as_ref()
                    .is_some_and(|l| l.generation == generation)
                {
                    if let SafekeeperMessage::Refused(r) = &msg {
                        tracing::warn!("safekeeper #{peer} refused: {}", r.reason);
                    }
                    core.on_message(peer, msg);
                }
            }
            Event::SkDisconnected {
                peer,
                generation,
                reason,
            } => {
                if self.links[peer]
                    .as_ref()
                    .is_some_and(|l| l.generation == generation)
                {
                    tracing::warn!(
                        "lost safekeeper #{peer} ({}): {reason}",
                        self.config.safekeepers[peer]
                    );
                    self.links[peer] = None;
                    core.on_disconnected(peer);
                }
            }
            Event::SkUnreachable { peer, reason } => {
                tracing::debug!(
                    "safekeeper #{peer} ({}) unreachable: {reason}",
                    self.config.safekeepers[peer]
                );
            }
            Event::PgStreaming { session, writer } => {
                if session == self.pg_session {
                    self.pg_writer = Some(writer);
                    self.send_status(core, false);
                }
            }
            Event::PgWal {
                session,
                start,
                data,
            } => {
                if session == self.pg_session {
                    self.pg_received = start.plus(data.len() as u64);
                    if let Err(e) = core.on_wal(start, data) {
                        tracing::error!("{e}; restarting the replication stream");
                        self.start_pg_session(core.wal_end());
                    }
                }
            }
            Event::PgKeepalive {
                session,
                reply_requested,
            } => {
                if session == self.pg_session && reply_requested {
                    self.send_status(core, false);
                }
            }
            Event::PgEnded { session, reason } => {
                if session == self.pg_session {
                    tracing::warn!(
                        "replication stream from Postgres ended: {reason}; reconnecting"
                    );
                    self.pg_writer = None;
                    self.start_pg_session(core.wal_end());
                }
            }
        }
        Ok(())
    }

    fn apply_outputs(&mut self, core: &mut Proposer) -> Result<(), ProposerError> {
        loop {
            let outputs = core.drain_outputs();
            if outputs.is_empty() {
                return Ok(());
            }
            for out in outputs {
                match out {
                    ProposerOutput::Send { to, msg } => {
                        send_to_link(&mut self.links, core, to, &msg);
                    }
                    ProposerOutput::Reconnect { peer, reason } => {
                        tracing::warn!("reconnecting to safekeeper #{peer}: {reason}");
                        close_link(&mut self.links, peer);
                    }
                    ProposerOutput::StartStreaming { from } => {
                        tracing::info!(
                            term = core.term().0,
                            "elected; streaming WAL from Postgres at {from}"
                        );
                        self.write_state_file(core);
                        self.start_pg_session(from);
                    }
                    ProposerOutput::Committed { commit_lsn } => {
                        tracing::debug!("quorum commit LSN {commit_lsn}");
                        self.send_status(core, false);
                    }
                    ProposerOutput::Stopped { reason } => {
                        self.write_state_file(core);
                        return Err(ProposerError::Stopped(reason));
                    }
                    // Only a sync proposer stops for this; this one starts new timelines.
                    ProposerOutput::TimelineEmpty => {
                        self.write_state_file(core);
                        return Err(ProposerError::EmptyTimeline {
                            timeline_id: self.config.timeline_id,
                        });
                    }
                }
            }
        }
    }

    /// Reports the quorum commit LSN as Postgres's flush position: this is what
    /// releases commits waiting for their synchronous standby.
    fn send_status(&mut self, core: &Proposer, reply_requested: bool) {
        self.last_status = Instant::now();
        let Some(writer) = self.pg_writer.as_mut() else {
            return;
        };
        let flush = core.commit_lsn();
        let write = self.pg_received.max(flush);
        if let Err(e) = writer.send_status(write, flush, flush, reply_requested) {
            tracing::warn!("cannot report to Postgres: {e}");
            self.pg_writer = None;
            return;
        }
        self.reported_flush = flush;
    }

    fn start_pg_session(&mut self, from: Lsn) {
        self.pg_session += 1;
        self.pg_writer = None;
        self.pg_received = from;
        let session = self.pg_session;
        let cfg = self.pg_config.clone();
        let tx = self.events_tx.clone();
        let expected = self.identity.system_id;
        let connstr = self.config.postgres.clone();
        let accepting = self.accepting_wal.clone();
        let spawned = thread::Builder::new()
            .name(format!("pg-stream-{session}"))
            .spawn(move || {
                let reason =
                    pg_session_thread(session, &cfg, expected.0, &connstr, from, &tx, &accepting);
                let _ = tx.send(Event::PgEnded { session, reason });
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the replication thread: {e}");
        }
    }

    fn write_state_file(&mut self, core: &Proposer) {
        self.last_state_file = Instant::now();
        let Some(path) = &self.config.state_file else {
            return;
        };
        let phase = match core.phase() {
            Phase::Greeting => "greeting".to_string(),
            Phase::Campaigning => "campaigning".to_string(),
            Phase::Elected => "elected".to_string(),
            Phase::Stopped(reason) => format!("stopped: {reason}"),
        };
        let flushes = core.peer_flush_lsns();
        let safekeepers: Vec<serde_json::Value> = self
            .config
            .safekeepers
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                serde_json::json!({
                    "address": addr,
                    "connected": self.links[i].is_some(),
                    "flush_lsn": flushes[i].map(|l| l.to_string()),
                })
            })
            .collect();
        let state = serde_json::json!({
            "pid": std::process::id(),
            "phase": phase,
            "term": core.term().0,
            "term_start_lsn": core.term_start_lsn().to_string(),
            "commit_lsn": core.commit_lsn().to_string(),
            "received_lsn": core.wal_end().to_string(),
            "reported_flush_lsn": self.reported_flush.to_string(),
            "postgres": {
                "system_id": self.identity.system_id.0.to_string(),
                "streaming": self.pg_writer.is_some(),
            },
            "safekeepers": safekeepers,
        });
        let tmp = path.with_extension("json.tmp");
        let written =
            std::fs::write(&tmp, state.to_string()).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!("cannot write state file {}: {e}", path.display());
        }
    }
}

/// One replication session: connect, check the system, stream from `from` until the
/// stream ends. Returns why it ended.
fn pg_session_thread(
    session: u64,
    cfg: &ReplicationConfig,
    expected_system_id: u64,
    connstr: &str,
    from: Lsn,
    tx: &Sender<Event>,
    accepting: &AtomicBool,
) -> String {
    let mut backoff = BACKOFF_MIN;
    let client = loop {
        let attempt = ReplicationClient::connect(cfg, CONNECT_TIMEOUT).and_then(|mut c| {
            let id = c.identify_system()?;
            Ok((c, id))
        });
        match attempt {
            Ok((mut client, id)) => {
                if id.system_id.0 != expected_system_id {
                    let err = ProposerError::WrongSystem {
                        connstr: connstr.to_string(),
                        found: id.system_id.0,
                        expected: expected_system_id,
                    };
                    return err.to_string();
                }
                match client.start_replication(from, id.timeline) {
                    Ok(()) => break client,
                    Err(e) => tracing::warn!(
                        "Postgres refused to stream from {from}: {e}; retrying in {backoff:?}"
                    ),
                }
            }
            Err(e) => tracing::warn!("cannot reach Postgres ({e}); retrying in {backoff:?}"),
        }
        thread::sleep(backoff);
        backoff = (backoff * 2).min(BACKOFF_MAX);
    };
    let (mut reader, writer) = match client.into_stream() {
        Ok(halves) => halves,
        Err(e) => return format!("cannot split the replication stream: {e}"),
    };
    if tx.send(Event::PgStreaming { session, writer }).is_err() {
        return "proposer is shutting down".into();
    }
    loop {
        // Backpressure: while the proposer holds all the unreplicated WAL it may, stop
        // reading, so TCP pushes back on the walsender. Status replies still go out
        // from the event loop, so the walsender does not time us out.
        let mut paused_since: Option<std::time::Instant> = None;
        while !accepting.load(Ordering::Acquire) {
            let since = *paused_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > BACKPRESSURE_WARN_AFTER {
                tracing::warn!(
                    "safekeepers are {BACKPRESSURE_WARN_AFTER:?} behind; Postgres is being held back"
                );
                paused_since = Some(std::time::Instant::now());
            }
            thread::sleep(BACKPRESSURE_POLL);
        }
        match reader.recv(Duration::from_secs(1)) {
            Ok(ReplicationEvent::XLogData {
                wal_start, data, ..
            }) => {
                if tx
                    .send(Event::PgWal {
                        session,
                        start: wal_start,
                        data,
                    })
                    .is_err()
                {
                    return "proposer is shutting down".into();
                }
            }
            Ok(ReplicationEvent::Keepalive {
                reply_requested, ..
            }) => {
                let _ = tx.send(Event::PgKeepalive {
                    session,
                    reply_requested,
                });
            }
            Ok(ReplicationEvent::Timeout) => {}
            Ok(ReplicationEvent::EndOfStream { reason }) => return format!("{reason:?}"),
            Err(e) => return e.to_string(),
        }
    }
}

/// Keeps one safekeeper connected: connects with bounded backoff, reads its messages
/// into the event loop and writes the loop's frames to it, until the loop closes the
/// link or the connection breaks; then starts over. Ends once `stop` is set (or the
/// event loop is gone).
fn link_thread(peer: PeerIndex, addr: String, events: Sender<Event>, stop: &AtomicBool) {
    let mut generation = 0u64;
    let mut backoff = BACKOFF_MIN;
    while !stop.load(Ordering::Acquire) {
        let stream = match connect(&addr) {
            Ok(s) => s,
            Err(e) => {
                let reason = format!("cannot connect to {addr}: {e}");
                if events.send(Event::SkUnreachable { peer, reason }).is_err() {
                    return;
                }
                sleep_unless_stopped(backoff, stop);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        generation += 1;
        let (commands_tx, commands) = mpsc::sync_channel(LINK_QUEUE_FRAMES);
        if events
            .send(Event::SkConnected {
                peer,
                generation,
                commands: commands_tx,
            })
            .is_err()
        {
            return;
        }
        let reason = serve_link(peer, generation, stream, &commands, &events, stop);
        if events
            .send(Event::SkDisconnected {
                peer,
                generation,
                reason,
            })
            .is_err()
        {
            return;
        }
    }
}

/// Sleeps `duration`, waking early once `stop` is set.
fn sleep_unless_stopped(duration: Duration, stop: &AtomicBool) {
    let until = Instant::now() + duration;
    loop {
        let now = Instant::now();
        if now >= until || stop.load(Ordering::Acquire) {
            return;
        }
        thread::sleep((until - now).min(TICK));
    }
}

fn connect(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{addr} resolves to no address"),
        )
    }))
}

fn serve_link(
    peer: PeerIndex,
    generation: u64,
    stream: TcpStream,
    commands: &Receiver<LinkCommand>,
    events: &Sender<Event>,
    stop: &AtomicBool,
) -> String {
    let reader_stream = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => return format!("cannot clone socket: {e}"),
    };
    let dead = Arc::new(AtomicBool::new(false));
    let reader_dead = dead.clone();
    let reader_events = events.clone();
    let reader = thread::spawn(move || {
        let mut r = std::io::BufReader::with_capacity(256 * 1024, reader_stream);
        let reason = loop {
            match read_safekeeper_message(&mut r) {
                Ok(msg) => {
                    if reader_events
                        .send(Event::SkMessage {
                            peer,
                            generation,
                            msg,
                        })
                        .is_err()
                    {
                        break "proposer is shutting down".to_string();
                    }
                }
                Err(e) => break e.to_string(),
            }
        };
        reader_dead.store(true, Ordering::Release);
        let _ = r.get_ref().shutdown(std::net::Shutdown::Both);
        reason
    });
    let mut writer = std::io::BufWriter::with_capacity(256 * 1024, &stream);
    let mut reason = String::new();
    while !dead.load(Ordering::Acquire) {
        if stop.load(Ordering::Acquire) {
            // What the loop queued before it stopped (its last appends) still goes out.
            while let Ok(LinkCommand::Send(frame)) = commands.try_recv() {
                if std::io::Write::write_all(&mut writer, &frame).is_err() {
                    break;
                }
            }
            let _ = std::io::Write::flush(&mut writer);
            reason = "closed by the proposer".into();
            break;
        }
        match commands.recv_timeout(Duration::from_millis(100)) {
            Ok(LinkCommand::Send(frame)) => {
                let mut result = std::io::Write::write_all(&mut writer, &frame);
                // Batch whatever else is queued into the same write.
                while result.is_ok() {
                    match commands.try_recv() {
                        Ok(LinkCommand::Send(f)) => {
                            result = std::io::Write::write_all(&mut writer, &f)
                        }
                        Ok(LinkCommand::Close) => {
                            reason = "closed by the proposer".into();
                            break;
                        }
                        Err(_) => break,
                    }
                }
                if let Err(e) = result.and_then(|()| std::io::Write::flush(&mut writer)) {
                    reason = format!("write failed: {e}");
                    break;
                }
                if !reason.is_empty() {
                    break;
                }
            }
            Ok(LinkCommand::Close) => {
                reason = "closed by the proposer".into();
                break;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                reason = "closed by the proposer".into();
                break;
            }
        }
    }
    drop(writer);
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let read_reason = reader
        .join()
        .unwrap_or_else(|_| "reader thread panicked".into());
    if reason.is_empty() {
        read_reason
    } else {
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::parse_server_version;

    #[test]
    fn server_version_becomes_version_num() {
        assert_eq!(
            parse_server_version("15.18 (Debian 15.18-0+deb12u1)"),
            Some(150018)
        );
        assert_eq!(parse_server_version("16.2"), Some(160002));
        assert_eq!(parse_server_version("15devel"), None);
        assert_eq!(parse_server_version(""), None);
    }
}
