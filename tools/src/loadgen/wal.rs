//! `tarn loadgen wal`: drives the safekeepers' append path directly, as a proposer
//! speaking the real protocol over TCP, and measures quorum append latency and
//! throughput.
//!
//! Each stream is one fresh timeline. Its setup runs the protocol like a proposer:
//! `Hello` to every safekeeper, `VoteRequest` for a term above every term seen, then
//! `Elected` with the history `[(term, start_lsn)]`. Then the stream's thread appends
//! synthetic PostgreSQL 15 WAL ([`WalGenerator`]), keeping up to `in_flight` appends
//! outstanding; every append goes to every safekeeper. One reader thread per
//! connection timestamps each `AppendResponse` as it arrives and hands it over; the
//! stream's [`QuorumFlush`] turns them into completions (see [`super::quorum`]).
//!
//! Appends sent during the warmup are not measured. After the measured window no new
//! append is sent and the outstanding ones are drained, so every measured append
//! counts with its true latency.

use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tarn_wal::format::XLOG_BLCKSZ;
use tarn_wal::format::synth::{MAX_PAYLOAD_BYTES, WalGenerator};
use tarn_wal::protocol::blocking::{
    FrameReadError, read_safekeeper_message, write_proposer_message,
};
use tarn_wal::protocol::{
    AppendRequest, Elected, Hello, MAX_APPEND_WAL_BYTES, PROTOCOL_VERSION, ProposerMessage,
    SafekeeperMessage, TermHistory, TermSwitch, VoteRequest, encode_proposer_message,
};
use tarn_wal::{Lsn, SystemId, Term, TimelineId};

use super::quorum::{CompletedAppend, InFlight, PendingAppend, QuorumFlush};
use super::report::{LatencyHistogram, StreamReport, WalLoadReport};

/// Database system id announced in `Hello`: arbitrary, fixed, so runs are comparable
/// and a timeline id reused by mistake is refused by the safekeeper, not mixed up.
pub const LOADGEN_SYSTEM_ID: SystemId = SystemId(0x7461_726E_6C6F_6164); // "tarnload"
/// Postgres version announced in `Hello` (the WAL is PostgreSQL 15's).
const PG_VERSION: u32 = 150000;
/// Postgres's default WAL segment size, which the generated WAL uses.
pub const SEGMENT_SIZE_BYTES: u64 = 16 << 20;
/// Where a fresh timeline starts by default: the start of segment 1, as a fresh
/// Postgres cluster's WAL does.
pub const DEFAULT_START_LSN: Lsn = Lsn(SEGMENT_SIZE_BYTES);

/// Bounds on the options: a run of more streams or deeper pipelines than these is a
/// mistake on a machine this size (each stream is 1 + N threads and N sockets).
pub const MAX_STREAMS: usize = 256;
pub const MAX_IN_FLIGHT: usize = 1024;
/// Bound on one run's measured and warmup time each.
pub const MAX_RUN_TIME: Duration = Duration::from_secs(24 * 3600);
/// Bound on the safekeepers of one run.
pub const MAX_SAFEKEEPERS: usize = 16;

/// Connecting to a safekeeper.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each setup answer (Hello, vote, election): a safekeeper persists its control file
/// for them, which takes milliseconds, not seconds.
const SETUP_REPLY_TIMEOUT: Duration = Duration::from_secs(30);
/// A blocked socket write: a safekeeper that does not read for this long is stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream with appends outstanding and no quorum progress for this long fails.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(30);
/// Socket buffer of each reader: responses are small, and a few hundred fit.
const READ_BUFFER_BYTES: usize = 16 << 10;

/// Options of one run.
#[derive(Clone, Debug)]
pub struct WalLoadOptions {
    /// Safekeeper addresses (`host:port`).
    pub safekeepers: Vec<String>,
    /// Main-data payload of each record (the WAL record is this plus ~30 bytes, plus a
    /// page header every 8 KiB).
    pub record_size_bytes: usize,
    /// Group records into appends of at least this many WAL bytes (0: one record per
    /// append); appends never exceed the protocol's 1 MiB.
    pub append_size_bytes: usize,
    /// Concurrent independent timelines.
    pub streams: usize,
    /// Appends outstanding per stream (1 measures latency; more pipelines).
    pub in_flight: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Timeline of the first stream (stream `i` uses this + `i`); random if `None`.
    /// The timelines must be new to the safekeepers.
    pub timeline_id: Option<TimelineId>,
    /// Where the timelines start (a segment start).
    pub start_lsn: Lsn,
}

impl Default for WalLoadOptions {
    fn default() -> Self {
        WalLoadOptions {
            safekeepers: Vec::new(),
            record_size_bytes: 8 << 10,
            append_size_bytes: 0,
            streams: 1,
            in_flight: 1,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            timeline_id: None,
            start_lsn: DEFAULT_START_LSN,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error("invalid option: {0}")]
    InvalidOption(String),
    #[error("cannot resolve safekeeper address {addr}: {detail}")]
    Resolve { addr: String, detail: String },
    // Causes are part of each message (not `source`s), so that a report printed with
    // its chain of causes does not repeat them.
    #[error("cannot connect to safekeeper {addr}: {cause}")]
    Connect { addr: String, cause: std::io::Error },
    #[error("safekeeper {addr}: {what} failed: {cause}")]
    Io {
        addr: String,
        what: &'static str,
        cause: std::io::Error,
    },
    #[error("safekeeper {addr} did not answer {during}: {cause}")]
    Read {
        addr: String,
        during: &'static str,
        cause: FrameReadError,
    },
    #[error("safekeeper {addr} refused {during}: {reason}")]
    Refused {
        addr: String,
        during: &'static str,
        reason: String,
    },
    #[error("safekeeper {addr} answered {during} with an unexpected {answer}")]
    Unexpected {
        addr: String,
        during: &'static str,
        answer: String,
    },
    #[error(
        "timeline {timeline} already holds WAL on safekeeper {addr} (starts at {start}); loadgen needs new timelines: omit --timeline-id or pick another"
    )]
    TimelineNotNew {
        addr: String,
        timeline: TimelineId,
        start: Lsn,
    },
    #[error("safekeeper {addr} denied its vote for term {term} (it is in term {its_term})")]
    VoteDenied {
        addr: String,
        term: Term,
        its_term: Term,
    },
    #[error(
        "timeline {timeline}: no quorum acknowledgement for {} s with appends outstanding (oldest ends at {oldest_end}; flush LSNs per safekeeper: {flush_lsns})",
        PROGRESS_TIMEOUT.as_secs()
    )]
    NoProgress {
        timeline: TimelineId,
        oldest_end: Lsn,
        flush_lsns: String,
    },
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    #[error("a load generator thread panicked: {0}")]
    Panicked(String),
}

/// Runs the load and reports what it measured.
pub fn run(options: &WalLoadOptions) -> Result<WalLoadReport, LoadgenError> {
    validate(options)?;
    let addrs = options
        .safekeepers
        .iter()
        .map(|a| resolve(a).map(|sock| (a.clone(), sock)))
        .collect::<Result<Vec<_>, _>>()?;
    let base_timeline = match options.timeline_id {
        Some(id) => id,
        None => random_timeline_id(),
    };

    // Set every stream up before any starts, so they measure the same window.
    let mut streams = Vec::with_capacity(options.streams);
    for i in 0..options.streams {
        let timeline = TimelineId(base_timeline.0.wrapping_add(i as u128));
        streams.push(StreamSetup::elect(&addrs, timeline, options.start_lsn)?);
    }

    let started = Instant::now();
    let window = Window {
        measure_from: started + options.warmup,
        send_until: started + options.warmup + options.duration,
    };
    let abort = Arc::new(AtomicBool::new(false));
    let mut handles: Vec<JoinHandle<Result<StreamOutcome, LoadgenError>>> = Vec::new();
    for (i, setup) in streams.into_iter().enumerate() {
        let params = StreamParams {
            record_size_bytes: options.record_size_bytes,
            append_size_bytes: options.append_size_bytes,
            in_flight: options.in_flight,
            window,
            seed: base_timeline.0 as u64 ^ i as u64,
        };
        let stream_abort = abort.clone();
        let handle = thread::Builder::new()
            .name(format!("loadgen-{i}"))
            .spawn(move || {
                let result = run_stream(setup, &params, &stream_abort);
                if result.is_err() {
                    // One failed stream ends the run: the others stop sending.
                    stream_abort.store(true, Ordering::Relaxed);
                }
                result
            })
            .map_err(LoadgenError::Thread);
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => {
                abort.store(true, Ordering::Relaxed);
                let _ = join_all(handles);
                return Err(e);
            }
        }
    }
    let outcomes = join_all(handles)?;

    let mut histogram = LatencyHistogram::default();
    let (mut appends, mut records, mut wal_bytes) = (0u64, 0u64, 0u64);
    let mut last_completion = window.measure_from;
    let mut timelines = Vec::new();
    for o in &outcomes {
        histogram.merge(&o.histogram);
        appends += o.appends;
        records += o.records;
        wal_bytes += o.wal_bytes;
        last_completion = last_completion.max(o.last_completion);
        timelines.push(StreamReport {
            timeline_id: o.timeline.to_string(),
            term: o.term.0,
            start_lsn: o.start_lsn.to_string(),
            end_lsn: o.end_lsn.to_string(),
        });
    }
    let measured = last_completion.saturating_duration_since(window.measure_from);
    let secs = measured.as_secs_f64();
    let per_sec = |n: f64| if secs > 0.0 { n / secs } else { 0.0 };
    Ok(WalLoadReport {
        safekeepers: options.safekeepers.clone(),
        streams: options.streams,
        in_flight: options.in_flight,
        record_size_bytes: options.record_size_bytes,
        append_size_bytes: options.append_size_bytes,
        warmup_secs: options.warmup.as_secs_f64(),
        measured_secs: secs,
        appends,
        records,
        wal_bytes,
        appends_per_sec: per_sec(appends as f64),
        records_per_sec: per_sec(records as f64),
        wal_mib_per_sec: per_sec(wal_bytes as f64 / (1 << 20) as f64),
        latency: histogram.summary(),
        timelines,
    })
}

fn join_all(
    handles: Vec<JoinHandle<Result<StreamOutcome, LoadgenError>>>,
) -> Result<Vec<StreamOutcome>, LoadgenError> {
    let mut first_error = None;
    let mut outcomes = Vec::new();
    for h in handles {
        match h.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                first_error.get_or_insert(LoadgenError::Panicked(what));
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(outcomes),
    }
}

/// Checks options before anything connects.
pub fn validate(options: &WalLoadOptions) -> Result<(), LoadgenError> {
    let bad = |m: String| Err(LoadgenError::InvalidOption(m));
    if options.safekeepers.is_empty() {
        return bad("--safekeepers needs at least one address".into());
    }
    if options.safekeepers.len() > MAX_SAFEKEEPERS {
        return bad(format!("at most {MAX_SAFEKEEPERS} safekeepers"));
    }
    if !(1..=MAX_STREAMS).contains(&options.streams) {
        return bad(format!("--streams must be 1..={MAX_STREAMS}"));
    }
    if !(1..=MAX_IN_FLIGHT).contains(&options.in_flight) {
        return bad(format!("--in-flight must be 1..={MAX_IN_FLIGHT}"));
    }
    let largest = largest_record_size_bytes();
    if options.record_size_bytes > largest {
        return bad(format!(
            "--record-size {} is too large: one record must fit one append of at most {MAX_APPEND_WAL_BYTES} WAL bytes, so at most {largest}",
            options.record_size_bytes
        ));
    }
    if options.append_size_bytes > MAX_APPEND_WAL_BYTES {
        return bad(format!(
            "--append-size {} exceeds the protocol's {MAX_APPEND_WAL_BYTES}-byte appends",
            options.append_size_bytes
        ));
    }
    if options.duration.is_zero() || options.duration > MAX_RUN_TIME {
        return bad("--duration must be positive and at most a day".into());
    }
    if options.warmup > MAX_RUN_TIME {
        return bad("--warmup must be at most a day".into());
    }
    if options.start_lsn == Lsn::INVALID
        || options.start_lsn.segment_offset(SEGMENT_SIZE_BYTES) != 0
    {
        return bad(format!(
            "--start-lsn {} must be a non-zero multiple of the {SEGMENT_SIZE_BYTES}-byte segment size",
            options.start_lsn
        ));
    }
    Ok(())
}

/// Upper bound on the WAL bytes of one generated record with `payload` bytes of main
/// data: header (24) + main-data header (≤ 5) + payload, a page header (≤ 40 bytes,
/// the long one at a segment start) for every page it touches, and ≤ 7 bytes of
/// alignment padding.
pub fn record_wal_bytes_bound(payload: usize) -> usize {
    let body = 24 + 5 + payload;
    let page = XLOG_BLCKSZ as usize;
    let pages_touched = body / (page - 40) + 2;
    body + pages_touched * 40 + 7
}

/// Largest record payload whose WAL always fits one append.
pub fn largest_record_size_bytes() -> usize {
    // record_wal_bytes_bound is monotonic: search down from the protocol limit.
    let mut payload = MAX_APPEND_WAL_BYTES.min(MAX_PAYLOAD_BYTES);
    while payload > 0 && record_wal_bytes_bound(payload) > MAX_APPEND_WAL_BYTES {
        payload -= 1;
    }
    payload
}

fn resolve(addr: &str) -> Result<SocketAddr, LoadgenError> {
    let err = |detail: String| LoadgenError::Resolve {
        addr: addr.to_string(),
        detail,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("it resolves to no address".into()))
}

/// A timeline id nobody else will pick: time and process id, mixed.
fn random_timeline_id() -> TimelineId {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut x = nanos ^ (u128::from(std::process::id()) << 96);
    // Two rounds of a 128-bit multiplicative mix spread the bits.
    for _ in 0..2 {
        x ^= x >> 61;
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    }
    TimelineId(x)
}

/// One connection of a stream, set up and ready for appends.
struct Connection {
    addr: String,
    stream: TcpStream,
}

/// A stream whose proposer won the election on every safekeeper.
struct StreamSetup {
    timeline: TimelineId,
    term: Term,
    start_lsn: Lsn,
    connections: Vec<Connection>,
}

impl StreamSetup {
    /// Connects to every safekeeper and runs Hello, vote and election on each.
    fn elect(
        addrs: &[(String, SocketAddr)],
        timeline: TimelineId,
        start_lsn: Lsn,
    ) -> Result<StreamSetup, LoadgenError> {
        let mut connections = Vec::with_capacity(addrs.len());
        for (addr, sock) in addrs {
            let stream = TcpStream::connect_timeout(sock, CONNECT_TIMEOUT).map_err(|cause| {
                LoadgenError::Connect {
                    addr: addr.clone(),
                    cause,
                }
            })?;
            let io = |what| {
                let addr = addr.clone();
                move |cause| LoadgenError::Io { addr, what, cause }
            };
            stream
                .set_nodelay(true)
                .map_err(io("setting TCP_NODELAY"))?;
            stream
                .set_read_timeout(Some(SETUP_REPLY_TIMEOUT))
                .map_err(io("setting a read timeout"))?;
            stream
                .set_write_timeout(Some(WRITE_TIMEOUT))
                .map_err(io("setting a write timeout"))?;
            connections.push(Connection {
                addr: addr.clone(),
                stream,
            });
        }

        // Each step goes to every safekeeper before any answer is read, so the
        // safekeepers persist their control files in parallel.
        let hello = ProposerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            system_id: LOADGEN_SYSTEM_ID,
            timeline_id: timeline,
            pg_version: PG_VERSION,
            segment_size_bytes: SEGMENT_SIZE_BYTES,
        });
        let mut max_term = Term(0);
        for reply in exchange(&mut connections, &hello, "Hello")? {
            let (addr, msg) = reply;
            match msg {
                SafekeeperMessage::HelloReply(r) => {
                    if r.timeline_start_lsn != Lsn::INVALID {
                        return Err(LoadgenError::TimelineNotNew {
                            addr,
                            timeline,
                            start: r.timeline_start_lsn,
                        });
                    }
                    max_term = max_term.max(r.term);
                }
                other => return Err(unexpected(addr, "Hello", other)),
            }
        }

        let term = Term(max_term.0 + 1);
        let vote = ProposerMessage::VoteRequest(VoteRequest { term });
        for (addr, msg) in exchange(&mut connections, &vote, "the vote request")? {
            match msg {
                SafekeeperMessage::Vote(v) if v.vote_given => {}
                SafekeeperMessage::Vote(v) => {
                    return Err(LoadgenError::VoteDenied {
                        addr,
                        term,
                        its_term: v.term,
                    });
                }
                other => return Err(unexpected(addr, "the vote request", other)),
            }
        }

        let elected = ProposerMessage::Elected(Elected {
            term,
            term_history: TermHistory(vec![TermSwitch {
                term,
                lsn: start_lsn,
            }]),
        });
        for (addr, msg) in exchange(&mut connections, &elected, "the election")? {
            match msg {
                SafekeeperMessage::ElectedAck(ack) if ack.flush_lsn == start_lsn => {}
                SafekeeperMessage::ElectedAck(ack) => {
                    return Err(LoadgenError::Unexpected {
                        addr,
                        during: "the election",
                        answer: format!(
                            "flush LSN {} (expected the new timeline's start {start_lsn})",
                            ack.flush_lsn
                        ),
                    });
                }
                other => return Err(unexpected(addr, "the election", other)),
            }
        }
        Ok(StreamSetup {
            timeline,
            term,
            start_lsn,
            connections,
        })
    }
}

/// Sends `msg` to every connection, then reads one answer from each. A refusal is an
/// error naming the safekeeper and its reason.
fn exchange(
    connections: &mut [Connection],
    msg: &ProposerMessage,
    during: &'static str,
) -> Result<Vec<(String, SafekeeperMessage)>, LoadgenError> {
    for c in connections.iter_mut() {
        write_proposer_message(&mut c.stream, msg).map_err(|cause| LoadgenError::Io {
            addr: c.addr.clone(),
            what: "sending",
            cause,
        })?;
    }
    let mut answers = Vec::with_capacity(connections.len());
    for c in connections.iter_mut() {
        let msg = read_safekeeper_message(&mut c.stream).map_err(|cause| LoadgenError::Read {
            addr: c.addr.clone(),
            during,
            cause,
        })?;
        if let SafekeeperMessage::Refused(r) = msg {
            return Err(LoadgenError::Refused {
                addr: c.addr.clone(),
                during,
                reason: r.reason,
            });
        }
        answers.push((c.addr.clone(), msg));
    }
    Ok(answers)
}

fn unexpected(addr: String, during: &'static str, msg: SafekeeperMessage) -> LoadgenError {
    let answer = match msg {
        SafekeeperMessage::HelloReply(_) => "HelloReply",
        SafekeeperMessage::Vote(_) => "Vote",
        SafekeeperMessage::ElectedAck(_) => "ElectedAck",
        SafekeeperMessage::AppendResponse(_) => "AppendResponse",
        SafekeeperMessage::WalChunk(_) => "WalChunk",
        SafekeeperMessage::Status(_) => "Status",
        SafekeeperMessage::Refused(_) => "Refused",
    };
    LoadgenError::Unexpected {
        addr,
        during,
        answer: answer.to_string(),
    }
}

#[derive(Clone, Copy, Debug)]
struct Window {
    /// Appends sent from here on are measured.
    measure_from: Instant,
    /// No append is sent after this.
    send_until: Instant,
}

#[derive(Clone, Debug)]
struct StreamParams {
    record_size_bytes: usize,
    append_size_bytes: usize,
    in_flight: usize,
    window: Window,
    seed: u64,
}

struct StreamOutcome {
    timeline: TimelineId,
    term: Term,
    start_lsn: Lsn,
    end_lsn: Lsn,
    histogram: LatencyHistogram,
    appends: u64,
    records: u64,
    wal_bytes: u64,
    last_completion: Instant,
}

/// What a reader thread reports about its connection.
enum ReaderEvent {
    Flushed {
        connection: usize,
        flush_lsn: Lsn,
        received_at: Instant,
    },
    Failed(LoadgenError),
}

/// An encoded append, ready to send to every safekeeper.
struct PreparedAppend {
    frame: Bytes,
    end_lsn: Lsn,
    wal_bytes: u64,
    records: u64,
}

/// Builds the next append from `generator`: one record, or as many as reach
/// `append_size_bytes` without passing the protocol's limit.
fn prepare_append(
    generator: &mut WalGenerator,
    params: &StreamParams,
    term: Term,
    commit_lsn: Lsn,
) -> PreparedAppend {
    let bound = record_wal_bytes_bound(params.record_size_bytes);
    let mut records = 0u64;
    loop {
        generator.append_record(params.record_size_bytes);
        records += 1;
        let buffered = generator.bytes().len();
        if buffered >= params.append_size_bytes || buffered + bound > MAX_APPEND_WAL_BYTES {
            break;
        }
    }
    let (begin_lsn, wal) = generator.take_bytes();
    assert!(
        wal.len() <= MAX_APPEND_WAL_BYTES,
        "an append of {} bytes exceeds the protocol limit",
        wal.len()
    );
    let request = AppendRequest {
        term,
        begin_lsn,
        commit_lsn,
        wal: Bytes::from(wal),
    };
    let end_lsn = request.end_lsn();
    let wal_bytes = request.wal.len() as u64;
    PreparedAppend {
        frame: encode_proposer_message(&ProposerMessage::Append(request)),
        end_lsn,
        wal_bytes,
        records,
    }
}

/// One stream: sends appends keeping `in_flight` outstanding, until the window ends
/// and everything sent is acknowledged by a majority.
fn run_stream(
    setup: StreamSetup,
    params: &StreamParams,
    abort: &AtomicBool,
) -> Result<StreamOutcome, LoadgenError> {
    let StreamSetup {
        timeline,
        term,
        start_lsn,
        mut connections,
    } = setup;
    let mut generator = WalGenerator::new(
        start_lsn,
        None,
        LOADGEN_SYSTEM_ID,
        SEGMENT_SIZE_BYTES,
        params.seed,
    )
    .map_err(|e| LoadgenError::InvalidOption(format!("cannot generate WAL at {start_lsn}: {e}")))?;

    let stopping = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel::<ReaderEvent>();
    let mut readers = Vec::with_capacity(connections.len());
    let mut spawn_result = Ok(());
    for (index, c) in connections.iter().enumerate() {
        match spawn_reader(index, c, events_tx.clone(), stopping.clone()) {
            Ok(h) => readers.push(h),
            Err(e) => {
                spawn_result = Err(e);
                break;
            }
        }
    }
    drop(events_tx);
    let result = spawn_result.and_then(|()| {
        drive(
            &mut connections,
            &events,
            &mut generator,
            params,
            (timeline, term, start_lsn),
            abort,
        )
    });
    // Unblock the readers (they sit in read()) and wait for them.
    stopping.store(true, Ordering::Relaxed);
    for c in &connections {
        let _ = c.stream.shutdown(Shutdown::Both);
    }
    for r in readers {
        let _ = r.join();
    }
    result
}

fn spawn_reader(
    index: usize,
    c: &Connection,
    events: Sender<ReaderEvent>,
    stopping: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, LoadgenError> {
    let io = |what| {
        let addr = c.addr.clone();
        move |cause| LoadgenError::Io { addr, what, cause }
    };
    let stream = c.stream.try_clone().map_err(io("cloning the socket"))?;
    // Responses come only after flushes; the stream's progress timeout bounds waits.
    stream
        .set_read_timeout(None)
        .map_err(io("clearing the read timeout"))?;
    let addr = c.addr.clone();
    thread::Builder::new()
        .name(format!("loadgen-rd-{index}"))
        .spawn(move || {
            let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
            loop {
                let event = match read_safekeeper_message(&mut reader) {
                    Ok(SafekeeperMessage::AppendResponse(r)) => ReaderEvent::Flushed {
                        connection: index,
                        flush_lsn: r.flush_lsn,
                        received_at: Instant::now(),
                    },
                    Ok(SafekeeperMessage::Refused(r)) => {
                        ReaderEvent::Failed(LoadgenError::Refused {
                            addr: addr.clone(),
                            during: "an append",
                            reason: r.reason,
                        })
                    }
                    Ok(other) => ReaderEvent::Failed(unexpected(addr.clone(), "an append", other)),
                    Err(_) if stopping.load(Ordering::Relaxed) => return,
                    Err(cause) => ReaderEvent::Failed(LoadgenError::Read {
                        addr: addr.clone(),
                        during: "appends",
                        cause,
                    }),
                };
                let failed = matches!(event, ReaderEvent::Failed(_));
                if events.send(event).is_err() || failed {
                    return;
                }
            }
        })
        .map_err(LoadgenError::Thread)
}

/// The stream's main loop; see [`run_stream`].
fn drive(
    connections: &mut [Connection],
    events: &Receiver<ReaderEvent>,
    generator: &mut WalGenerator,
    params: &StreamParams,
    (timeline, term, start_lsn): (TimelineId, Term, Lsn),
    abort: &AtomicBool,
) -> Result<StreamOutcome, LoadgenError> {
    let mut quorum = QuorumFlush::new(connections.len(), start_lsn);
    let mut in_flight = InFlight::default();
    let mut next: Option<PreparedAppend> = None;
    let mut outcome = StreamOutcome {
        timeline,
        term,
        start_lsn,
        end_lsn: start_lsn,
        histogram: LatencyHistogram::default(),
        appends: 0,
        records: 0,
        wal_bytes: 0,
        last_completion: params.window.measure_from,
    };
    let mut last_progress = Instant::now();
    loop {
        let sending = Instant::now() < params.window.send_until && !abort.load(Ordering::Relaxed);
        if sending {
            while in_flight.len() < params.in_flight {
                let append = match next.take() {
                    Some(a) => a,
                    None => prepare_append(generator, params, term, quorum.quorum_lsn()),
                };
                let sent_at = Instant::now();
                for c in connections.iter_mut() {
                    c.stream
                        .write_all(&append.frame)
                        .map_err(|cause| LoadgenError::Io {
                            addr: c.addr.clone(),
                            what: "sending an append",
                            cause,
                        })?;
                }
                if in_flight.is_empty() {
                    last_progress = sent_at;
                }
                in_flight.push(PendingAppend {
                    end_lsn: append.end_lsn,
                    sent_at,
                    wal_bytes: append.wal_bytes,
                    records: append.records,
                });
                outcome.end_lsn = append.end_lsn;
            }
            // Build the next append while this one is on its way: generating WAL is
            // then off the measured path at in-flight 1.
            if next.is_none() {
                next = Some(prepare_append(generator, params, term, quorum.quorum_lsn()));
            }
        } else if in_flight.is_empty() {
            break;
        }

        let wait = PROGRESS_TIMEOUT.saturating_sub(last_progress.elapsed());
        let first = match events.recv_timeout(wait) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                return Err(LoadgenError::NoProgress {
                    timeline,
                    oldest_end: in_flight.oldest().map_or(Lsn::INVALID, |a| a.end_lsn),
                    flush_lsns: format_lsns(quorum.flush_lsns()),
                });
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(LoadgenError::Panicked(
                    "every connection reader ended".into(),
                ));
            }
        };
        // Handle everything already queued before sending again.
        for event in std::iter::once(first).chain(events.try_iter()) {
            match event {
                ReaderEvent::Flushed {
                    connection,
                    flush_lsn,
                    received_at,
                } => {
                    let quorum_lsn = quorum.on_flush(connection, flush_lsn);
                    let done = in_flight.complete_up_to(quorum_lsn, received_at);
                    if !done.is_empty() {
                        last_progress = received_at;
                    }
                    for c in done {
                        account(&mut outcome, &c, params.window.measure_from);
                    }
                }
                ReaderEvent::Failed(e) => return Err(e),
            }
        }
    }
    Ok(outcome)
}

fn account(outcome: &mut StreamOutcome, c: &CompletedAppend, measure_from: Instant) {
    if c.append.sent_at < measure_from {
        return;
    }
    outcome.histogram.record(c.latency());
    outcome.appends += 1;
    outcome.records += c.append.records;
    outcome.wal_bytes += c.append.wal_bytes;
    outcome.last_completion = outcome.last_completion.max(c.completed_at);
}

fn format_lsns(lsns: &[Lsn]) -> String {
    lsns.iter()
        .map(Lsn::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a byte count: a number with an optional suffix `k`/`KiB`, `m`/`MiB`
/// (powers of 1024), e.g. `8192`, `8k`, `128KiB`, `1MiB`.
pub fn parse_byte_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size (e.g. 8192, 8k, 128KiB)"))?;
    let multiplier: usize = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        _ => return Err(format!("{text:?} has an unknown unit (use k or m)")),
    };
    n.checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_binary_units() {
        assert_eq!(parse_byte_size("8192"), Ok(8192));
        assert_eq!(parse_byte_size("8k"), Ok(8192));
        assert_eq!(parse_byte_size("128KiB"), Ok(128 << 10));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert!(parse_byte_size("k").is_err());
        assert!(parse_byte_size("8x").is_err());
        assert!(parse_byte_size("-1").is_err());
    }

    #[test]
    fn record_bound_covers_generated_records() {
        for payload in [0usize, 1, 100, 8000, 8192, 65536, 128 << 10, 500_000] {
            // Start a few bytes before a segment end so the record also crosses a
            // segment boundary (long page header).
            let start = Lsn(SEGMENT_SIZE_BYTES * 2 - 8192);
            let mut g = WalGenerator::new(start, None, LOADGEN_SYSTEM_ID, SEGMENT_SIZE_BYTES, 7)
                .expect("valid start");
            let (s, e) = g.append_record(payload);
            let len = (e.0 - s.0) as usize + (s.0 - start.0) as usize;
            assert!(
                len <= record_wal_bytes_bound(payload),
                "payload {payload}: {len} > {}",
                record_wal_bytes_bound(payload)
            );
        }
        let largest = largest_record_size_bytes();
        assert!(largest > 1_000_000 && record_wal_bytes_bound(largest) <= MAX_APPEND_WAL_BYTES);
    }

    fn params(record: usize, append: usize) -> StreamParams {
        let now = Instant::now();
        StreamParams {
            record_size_bytes: record,
            append_size_bytes: append,
            in_flight: 1,
            window: Window {
                measure_from: now,
                send_until: now,
            },
            seed: 1,
        }
    }

    #[test]
    fn appends_group_records_up_to_the_requested_size_within_the_limit() {
        let mut g = WalGenerator::new(
            DEFAULT_START_LSN,
            None,
            LOADGEN_SYSTEM_ID,
            SEGMENT_SIZE_BYTES,
            3,
        )
        .expect("valid start");
        let one = prepare_append(&mut g, &params(8192, 0), Term(1), Lsn::INVALID);
        assert_eq!(one.records, 1);
        assert_eq!(one.end_lsn, g.end());

        let grouped = prepare_append(&mut g, &params(8192, 64 << 10), Term(1), Lsn::INVALID);
        assert!(grouped.records >= 7, "{} records", grouped.records);
        assert!(grouped.wal_bytes >= 64 << 10);

        // Asking for more than the limit stops short of it.
        let big = prepare_append(
            &mut g,
            &params(128 << 10, MAX_APPEND_WAL_BYTES),
            Term(1),
            Lsn::INVALID,
        );
        assert!(big.wal_bytes as usize <= MAX_APPEND_WAL_BYTES);
        assert!(big.records >= 7);

        // The frame decodes as the append it claims to be.
        let body = big.frame.slice(tarn_wal::protocol::FRAME_HEADER_BYTES..);
        let header: [u8; tarn_wal::protocol::FRAME_HEADER_BYTES] = big.frame
            [..tarn_wal::protocol::FRAME_HEADER_BYTES]
            .try_into()
            .expect("header length");
        let kind = tarn_wal::protocol::decode_frame_header(&header)
            .expect("valid header")
            .kind;
        match tarn_wal::protocol::decode_proposer_message(kind, body).expect("valid frame") {
            ProposerMessage::Append(a) => assert_eq!(a.end_lsn(), big.end_lsn),
            other => panic!("decoded {other:?}"),
        }
    }

    #[test]
    fn options_are_checked_before_connecting() {
        let ok = WalLoadOptions {
            safekeepers: vec!["127.0.0.1:1".into()],
            ..WalLoadOptions::default()
        };
        assert!(validate(&ok).is_ok());
        let bad = [
            WalLoadOptions {
                safekeepers: vec![],
                ..ok.clone()
            },
            WalLoadOptions {
                streams: 0,
                ..ok.clone()
            },
            WalLoadOptions {
                in_flight: 0,
                ..ok.clone()
            },
            WalLoadOptions {
                record_size_bytes: 2 << 20,
                ..ok.clone()
            },
            WalLoadOptions {
                append_size_bytes: 2 << 20,
                ..ok.clone()
            },
            WalLoadOptions {
                duration: Duration::ZERO,
                ..ok.clone()
            },
            WalLoadOptions {
                start_lsn: Lsn(12345),
                ..ok.clone()
            },
        ];
        for options in bad {
            assert!(
                matches!(validate(&options), Err(LoadgenError::InvalidOption(_))),
                "{options:?}"
            );
        }
    }

    #[test]
    fn unreachable_safekeeper_is_a_connect_error() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let options = WalLoadOptions {
            safekeepers: vec![format!("127.0.0.1:{port}")],
            duration: Duration::from_millis(10),
            warmup: Duration::ZERO,
            ..WalLoadOptions::default()
        };
        let err = run(&options).expect_err("nothing listens");
        assert!(matches!(err, LoadgenError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("cannot connect"), "{err}");
    }
}
