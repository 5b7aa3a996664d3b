//! A `tarn safekeeper` process fed hostile and out-of-place input over raw TCP: broken
//! framing, unknown and misplaced messages, stale terms, appends past the end and a
//! foreign database system. Each is refused with a `Refused` message whose reason
//! names the problem, the refusal ends the connection, nothing durable changes, and
//! afterwards the same process still answers status queries and serves a legitimate
//! proposer (Hello, VoteRequest, Elected, Append of valid WAL, AppendResponse at the
//! end of the appended records).
//!
//! Needs the binary: `cargo build --bin tarn` before `cargo test`.

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::time::Duration;

use tarn_tests::{OwnedChild, TempDir, free_port, spawn_tarn, wait_for};
use tarn_wal::format::synth::WalGenerator;
use tarn_wal::protocol::blocking::{
    FrameReadError, read_safekeeper_message, write_proposer_message,
};
use tarn_wal::protocol::{
    AppendRequest, Elected, FRAME_HEADER_BYTES, Hello, MAX_FRAME_BODY_BYTES, PROTOCOL_MAGIC,
    PROTOCOL_VERSION, ProposerMessage, Refusal, SafekeeperMessage, TermHistory, TermSwitch,
    TimelineStatus, VoteRequest, encode_proposer_message,
};
use tarn_wal::safekeeper::query_status;
use tarn_wal::{Lsn, SystemId, Term, TimelineId};

/// Bound on every read and write of a test connection: the safekeeper answers in
/// milliseconds, and a missing answer must fail the test rather than hang it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the safekeeper starting to answer status queries.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const SEGMENT_SIZE_BYTES: u64 = 16 << 20;
const PG_VERSION: u32 = 150_000;
/// Where synthetic timelines start (segment 3: any segment start is a record boundary).
const TIMELINE_START: Lsn = Lsn(3 * SEGMENT_SIZE_BYTES);
/// Frame kinds of the wire format (protocol/codec.rs), for frames built by hand.
const KIND_HELLO: u8 = 1;
const KIND_STATUS: u8 = 6;

/// A `tarn safekeeper` run by the test on a free port and a temporary directory.
struct Safekeeper {
    process: OwnedChild,
    addr: SocketAddr,
    // Declared last: removed after the process has stopped.
    dir: TempDir,
}

impl Safekeeper {
    fn start(name: &str) -> Safekeeper {
        let dir = TempDir::new(name);
        let port = free_port();
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        let data_dir = dir.join("safekeeper");
        let process = spawn_tarn(
            "safekeeper",
            &[
                "safekeeper",
                "--id",
                "7",
                "--listen",
                &addr.to_string(),
                "--dir",
                data_dir.to_str().expect("UTF-8 path"),
            ],
            &dir.join("safekeeper.log"),
        );
        let mut safekeeper = Safekeeper { process, addr, dir };
        wait_for("the safekeeper to answer status", START_TIMEOUT, || {
            if let Some(status) = safekeeper.process.try_exit_status() {
                panic!("the safekeeper exited ({status})");
            }
            query_status(addr, Duration::from_secs(1)).ok()
        });
        safekeeper
    }

    /// The safekeeper's log, for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("safekeeper.log")).unwrap_or_default()
    }

    fn connect(&self) -> TcpStream {
        let stream = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT)
            .unwrap_or_else(|error| panic!("cannot connect to {}: {error}", self.addr));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream
    }

    /// Opens a connection, sends `bytes` (then closes our sending side if
    /// `close_after`), and returns the refusal that must follow. Also checks that the
    /// safekeeper then closes the connection and still answers a status query.
    fn refusal_of_raw(&self, bytes: &[u8], close_after: bool) -> Refusal {
        let mut stream = self.connect();
        stream.write_all(bytes).expect("send");
        if close_after {
            stream.shutdown(Shutdown::Write).expect("half-close");
        }
        let refusal = expect_refusal(&mut stream);
        self.status();
        refusal
    }

    /// A status query on a new connection, as `tarn status` makes it.
    fn status(&self) -> Vec<TimelineStatus> {
        let reply = query_status(self.addr, IO_TIMEOUT)
            .unwrap_or_else(|error| panic!("status query failed: {error}\n{}", self.log()));
        assert_eq!(reply.node_id.0, 7);
        reply.timelines
    }

    fn timeline_status(&self, timeline: TimelineId) -> TimelineStatus {
        self.status()
            .into_iter()
            .find(|t| t.timeline_id == timeline)
            .unwrap_or_else(|| panic!("timeline {timeline} missing from status"))
    }

    /// Checks the process is alive, answers a status query, and serves a whole
    /// legitimate proposer flow on a new timeline.
    fn assert_still_serves(&mut self, seed: u64) {
        if let Some(status) = self.process.try_exit_status() {
            panic!("the safekeeper died ({status}):\n{}", self.log());
        }
        let timeline = TimelineId(0xfeed_0000 + u128::from(seed));
        let system = SystemId(0x5eed_0000 + seed);
        let mut proposer = ProposerFlow::new(self, system, timeline, seed);
        proposer.elect(Term(1));
        proposer.append_in_two_parts();
        let status = self.timeline_status(timeline);
        assert_eq!(status.system_id, system);
        assert_eq!(status.term, Term(1));
        assert_eq!(status.timeline_start_lsn, TIMELINE_START);
        assert_eq!(status.flush_lsn, proposer.generator.end());
    }
}

/// Reads the one reply that must be a refusal, then the end of the connection.
fn expect_refusal(stream: &mut TcpStream) -> Refusal {
    let refusal = match read_safekeeper_message(stream) {
        Ok(SafekeeperMessage::Refused(refusal)) => refusal,
        Ok(other) => panic!("expected a refusal, got {other:?}"),
        Err(error) => panic!("expected a refusal, got no message: {error}"),
    };
    match read_safekeeper_message(stream) {
        Err(FrameReadError::Closed) => {}
        Err(FrameReadError::Io(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a refusal must end the connection; then got {other:?}"),
    }
    refusal
}

fn assert_reason(refusal: &Refusal, expected: &[&str]) {
    for part in expected {
        assert!(
            refusal.reason.contains(part),
            "refusal reason {:?} should contain {part:?}",
            refusal.reason
        );
    }
}

fn send(stream: &mut TcpStream, msg: &ProposerMessage) {
    write_proposer_message(stream, msg).expect("send");
}

fn receive(stream: &mut TcpStream) -> SafekeeperMessage {
    read_safekeeper_message(stream).unwrap_or_else(|error| panic!("no reply: {error}"))
}

fn frame_header(kind: u8, body_len: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(FRAME_HEADER_BYTES);
    header.extend_from_slice(&PROTOCOL_MAGIC.to_le_bytes());
    header.push(kind);
    header.extend_from_slice(&body_len.to_le_bytes());
    header
}

fn hello(system: SystemId, timeline: TimelineId) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        system_id: system,
        timeline_id: timeline,
        pg_version: PG_VERSION,
        segment_size_bytes: SEGMENT_SIZE_BYTES,
    }
}

/// A well-behaved proposer driving one timeline over one connection, with the
/// synthetic WAL it appends.
struct ProposerFlow {
    stream: TcpStream,
    generator: WalGenerator,
    history: TermHistory,
    term: Term,
}

impl ProposerFlow {
    /// Connects and greets; the timeline is new or continues WAL written by an earlier
    /// flow (`generator` continues it).
    fn new(sk: &Safekeeper, system: SystemId, timeline: TimelineId, seed: u64) -> ProposerFlow {
        let generator = WalGenerator::new(TIMELINE_START, None, system, SEGMENT_SIZE_BYTES, seed)
            .expect("generator");
        ProposerFlow::resume(sk, system, timeline, generator, TermHistory::default())
    }

    fn resume(
        sk: &Safekeeper,
        system: SystemId,
        timeline: TimelineId,
        generator: WalGenerator,
        history: TermHistory,
    ) -> ProposerFlow {
        let mut stream = sk.connect();
        send(
            &mut stream,
            &ProposerMessage::Hello(hello(system, timeline)),
        );
        match receive(&mut stream) {
            SafekeeperMessage::HelloReply(reply) => {
                let (start, flush) = match history.0.first() {
                    Some(first) => (first.lsn, generator.buffered_start()),
                    None => (Lsn::INVALID, Lsn::INVALID),
                };
                assert_eq!(reply.timeline_start_lsn, start, "{reply:?}");
                assert_eq!(reply.flush_lsn, flush, "{reply:?}");
            }
            other => panic!("expected HelloReply, got {other:?}"),
        }
        ProposerFlow {
            stream,
            generator,
            history,
            term: Term(0),
        }
    }

    /// Wins `term` and announces a history that continues the WAL held.
    fn elect(&mut self, term: Term) {
        send(
            &mut self.stream,
            &ProposerMessage::VoteRequest(VoteRequest { term }),
        );
        let flush = self.generator.buffered_start();
        let new_timeline = self.history.0.is_empty();
        match receive(&mut self.stream) {
            SafekeeperMessage::Vote(vote) => {
                assert!(vote.vote_given, "{vote:?}");
                assert_eq!(vote.term, term);
                let held = if new_timeline { Lsn::INVALID } else { flush };
                assert_eq!(vote.flush_lsn, held);
                assert_eq!(vote.term_history, self.history);
            }
            other => panic!("expected a vote, got {other:?}"),
        }
        self.history.0.push(TermSwitch { term, lsn: flush });
        self.term = term;
        send(
            &mut self.stream,
            &ProposerMessage::Elected(Elected {
                term,
                term_history: self.history.clone(),
            }),
        );
        match receive(&mut self.stream) {
            SafekeeperMessage::ElectedAck(ack) => {
                assert_eq!(ack.term, term);
                assert_eq!(ack.flush_lsn, flush);
            }
            other => panic!("expected ElectedAck, got {other:?}"),
        }
    }

    /// Appends ~60 KiB of records (one spanning several pages) in two appends cut
    /// inside the big record: the first is acknowledged up to the last complete record
    /// before the cut, the second up to the end.
    fn append_in_two_parts(&mut self) {
        let mut record_ends = Vec::new();
        for i in 0..30 {
            record_ends.push(self.generator.append_record(37 + i * 101).1);
        }
        let (big_start, big_end) = self.generator.append_record(20_000);
        for i in 0..10 {
            record_ends.push(self.generator.append_record(3 + i * 13).1);
        }
        let before_big = record_ends[29];
        let (begin, wal) = self.generator.take_bytes();
        let cut = (big_start.0 + (big_end.0 - big_start.0) / 2 - begin.0) as usize;
        let flush = self.append(begin, &wal[..cut]);
        assert_eq!(
            flush, before_big,
            "a flush acknowledges only complete records"
        );
        let flush = self.append(Lsn(begin.0 + cut as u64), &wal[cut..]);
        assert_eq!(flush, self.generator.end());
    }

    /// Sends one append and returns the acknowledged flush LSN.
    fn append(&mut self, begin: Lsn, wal: &[u8]) -> Lsn {
        send(
            &mut self.stream,
            &ProposerMessage::Append(AppendRequest {
                term: self.term,
                begin_lsn: begin,
                commit_lsn: Lsn::INVALID,
                wal: wal.to_vec().into(),
            }),
        );
        match receive(&mut self.stream) {
            SafekeeperMessage::AppendResponse(response) => {
                assert_eq!(response.term, self.term);
                response.flush_lsn
            }
            other => panic!("expected AppendResponse, got {other:?}"),
        }
    }
}

#[test]
fn broken_framing_is_refused_by_name() {
    let mut sk = Safekeeper::start("hostileframe");

    let mut wrong_magic = frame_header(KIND_STATUS, 0);
    wrong_magic[..4].copy_from_slice(&0xdead_beef_u32.to_le_bytes());
    assert_reason(
        &sk.refusal_of_raw(&wrong_magic, false),
        &["wrong magic 0xdeadbeef", "not a tarn peer"],
    );

    // An HTTP request is the most likely stranger on this port.
    // (Exactly one header's worth: unread bytes would make the close a reset.)
    assert_reason(
        &sk.refusal_of_raw(&b"GET / HTTP/1.1\r\n"[..FRAME_HEADER_BYTES], false),
        &["wrong magic 0x20544547"],
    );

    // Half a header, then the sender closes.
    let header = frame_header(KIND_STATUS, 0);
    assert_reason(
        &sk.refusal_of_raw(&header[..5], true),
        &["truncated", "header", "needs 9 bytes, 5 remain"],
    );

    // A header promising a body, then the sender closes.
    assert_reason(
        &sk.refusal_of_raw(&frame_header(KIND_HELLO, 40), true),
        &["truncated", "body", "needs 40 bytes, 0 remain"],
    );

    // A header promising more body than is sent, then the sender closes.
    let mut short_body = frame_header(KIND_HELLO, 40);
    short_body.extend_from_slice(&[1u8; 10]);
    assert_reason(
        &sk.refusal_of_raw(&short_body, true),
        &["truncated", "body", "needs 40 bytes, 10 remain"],
    );

    let oversized = MAX_FRAME_BODY_BYTES as u32 + 1;
    assert_reason(
        &sk.refusal_of_raw(&frame_header(KIND_HELLO, oversized), false),
        &[
            &format!("frame body of {oversized} bytes"),
            "exceeds the limit",
        ],
    );
    assert_reason(
        &sk.refusal_of_raw(&frame_header(KIND_STATUS, u32::MAX), false),
        &["exceeds the limit"],
    );

    assert_reason(
        &sk.refusal_of_raw(&frame_header(99, 0), false),
        &["unknown message kind 99"],
    );
    // A safekeeper's own message kind is not one a proposer sends.
    assert_reason(
        &sk.refusal_of_raw(&frame_header(107, 0), false),
        &["unknown message kind 107"],
    );

    // Complete frames whose bodies do not match their kind.
    let mut short_hello = frame_header(KIND_HELLO, 3);
    short_hello.extend_from_slice(&[1, 0, 0]);
    assert_reason(
        &sk.refusal_of_raw(&short_hello, false),
        &["truncated Hello frame", "protocol_version"],
    );
    let mut status_with_body = frame_header(KIND_STATUS, 2);
    status_with_body.extend_from_slice(&[0, 0]);
    assert_reason(
        &sk.refusal_of_raw(&status_with_body, false),
        &["Status frame has 2 unexpected trailing bytes"],
    );

    // Garbage after a valid Hello, inside an established connection.
    let timeline = TimelineId(0xabc);
    let mut stream = sk.connect();
    send(
        &mut stream,
        &ProposerMessage::Hello(hello(SystemId(1), timeline)),
    );
    assert!(matches!(
        receive(&mut stream),
        SafekeeperMessage::HelloReply(_)
    ));
    stream.write_all(&frame_header(42, 0)).expect("send");
    assert_reason(&expect_refusal(&mut stream), &["unknown message kind 42"]);

    // Nothing above created state beyond the one greeted timeline.
    let timelines = sk.status();
    assert_eq!(timelines.len(), 1, "{timelines:?}");
    assert_eq!(timelines[0].timeline_id, timeline);
    assert_eq!(timelines[0].term, Term(0));
    sk.assert_still_serves(1);
}

#[test]
fn messages_out_of_place_are_refused_by_name() {
    let mut sk = Safekeeper::start("hostileorder");
    let system = SystemId(77);
    let timeline = TimelineId(0x77);
    let first_messages = [
        (
            ProposerMessage::VoteRequest(VoteRequest { term: Term(1) }),
            "got VoteRequest",
        ),
        (
            ProposerMessage::Elected(Elected {
                term: Term(1),
                term_history: TermHistory(vec![TermSwitch {
                    term: Term(1),
                    lsn: TIMELINE_START,
                }]),
            }),
            "got Elected",
        ),
        (
            ProposerMessage::Append(AppendRequest {
                term: Term(1),
                begin_lsn: TIMELINE_START,
                commit_lsn: Lsn::INVALID,
                wal: vec![0u8; 64].into(),
            }),
            "got Append",
        ),
    ];
    for (msg, expected) in &first_messages {
        let mut stream = sk.connect();
        stream
            .write_all(&encode_proposer_message(msg))
            .expect("send");
        assert_reason(
            &expect_refusal(&mut stream),
            &["expected Hello or Status as the first message", expected],
        );
    }
    assert!(
        sk.status().is_empty(),
        "a refused first message creates no timeline"
    );

    // Hello and Status are only valid first.
    for (second, name) in [
        (ProposerMessage::Hello(hello(system, timeline)), "Hello"),
        (ProposerMessage::Status, "Status"),
    ] {
        let mut stream = sk.connect();
        send(
            &mut stream,
            &ProposerMessage::Hello(hello(system, timeline)),
        );
        assert!(matches!(
            receive(&mut stream),
            SafekeeperMessage::HelloReply(_)
        ));
        send(&mut stream, &second);
        assert_reason(
            &expect_refusal(&mut stream),
            &[&format!(
                "{name} is only valid as a connection's first message"
            )],
        );
    }

    // An append before any election, and an election that is not one.
    let mut stream = sk.connect();
    send(
        &mut stream,
        &ProposerMessage::Hello(hello(system, timeline)),
    );
    receive(&mut stream);
    send(
        &mut stream,
        &ProposerMessage::Append(AppendRequest {
            term: Term(0),
            begin_lsn: TIMELINE_START,
            commit_lsn: Lsn::INVALID,
            wal: vec![0u8; 64].into(),
        }),
    );
    assert_reason(
        &expect_refusal(&mut stream),
        &["append for term 0 arrived before that term's election"],
    );
    let mut stream = sk.connect();
    send(
        &mut stream,
        &ProposerMessage::Hello(hello(system, timeline)),
    );
    receive(&mut stream);
    send(
        &mut stream,
        &ProposerMessage::Elected(Elected {
            term: Term(4),
            term_history: TermHistory(vec![TermSwitch {
                term: Term(3),
                lsn: TIMELINE_START,
            }]),
        }),
    );
    assert_reason(
        &expect_refusal(&mut stream),
        &["election of term 4 carries a history that ends in term 3"],
    );

    let status = sk.timeline_status(timeline);
    assert_eq!(
        (status.term, status.timeline_start_lsn, status.flush_lsn),
        (Term(0), Lsn::INVALID, Lsn::INVALID),
        "refused messages change nothing"
    );
    sk.assert_still_serves(2);
}

#[test]
fn stale_terms_appends_past_the_end_and_foreign_systems_are_refused() {
    let mut sk = Safekeeper::start("hostileterm");
    let system = SystemId(0x1234_5678);
    let timeline = TimelineId(0x7e57);

    // Proposer A wins term 1 and writes some WAL.
    let mut a = ProposerFlow::new(&sk, system, timeline, 11);
    a.elect(Term(1));
    a.append_in_two_parts();
    let flush = a.generator.end();
    let last_record_start = a.generator.last_record_start();

    // Proposer B asks for term 2: A's appends are now from the past.
    let mut b = sk.connect();
    send(&mut b, &ProposerMessage::Hello(hello(system, timeline)));
    receive(&mut b);
    send(
        &mut b,
        &ProposerMessage::VoteRequest(VoteRequest { term: Term(2) }),
    );
    match receive(&mut b) {
        SafekeeperMessage::Vote(vote) => assert!(vote.vote_given && vote.term == Term(2)),
        other => panic!("expected a vote, got {other:?}"),
    }
    a.generator.append_record(100);
    let (begin, wal) = a.generator.take_bytes();
    send(
        &mut a.stream,
        &ProposerMessage::Append(AppendRequest {
            term: Term(1),
            begin_lsn: begin,
            commit_lsn: Lsn::INVALID,
            wal: wal.into(),
        }),
    );
    let refusal = expect_refusal(&mut a.stream);
    assert_reason(
        &refusal,
        &["append from term 1 is from the past", "in term 2"],
    );
    assert_eq!(refusal.term, Term(2), "the refusal tells A the newer term");

    // A stale election and a stale vote request are not honoured either.
    let mut stale = sk.connect();
    send(&mut stale, &ProposerMessage::Hello(hello(system, timeline)));
    receive(&mut stale);
    send(
        &mut stale,
        &ProposerMessage::VoteRequest(VoteRequest { term: Term(1) }),
    );
    match receive(&mut stale) {
        SafekeeperMessage::Vote(vote) => assert!(!vote.vote_given && vote.term == Term(2)),
        other => panic!("expected a refused vote, got {other:?}"),
    }
    send(
        &mut stale,
        &ProposerMessage::Elected(Elected {
            term: Term(1),
            term_history: a.history.clone(),
        }),
    );
    assert_reason(
        &expect_refusal(&mut stale),
        &["election of term 1 is stale", "promised term 2"],
    );

    // B wins term 2 (continuing A's WAL) and then appends past the end.
    send(
        &mut b,
        &ProposerMessage::Elected(Elected {
            term: Term(2),
            term_history: TermHistory(vec![
                TermSwitch {
                    term: Term(1),
                    lsn: TIMELINE_START,
                },
                TermSwitch {
                    term: Term(2),
                    lsn: flush,
                },
            ]),
        }),
    );
    match receive(&mut b) {
        SafekeeperMessage::ElectedAck(ack) => assert_eq!(ack.flush_lsn, flush),
        other => panic!("expected ElectedAck, got {other:?}"),
    }
    let past_end = flush.plus(8192);
    send(
        &mut b,
        &ProposerMessage::Append(AppendRequest {
            term: Term(2),
            begin_lsn: past_end,
            commit_lsn: Lsn::INVALID,
            wal: vec![0u8; 64].into(),
        }),
    );
    assert_reason(
        &expect_refusal(&mut b),
        &[
            "append beyond the end",
            &format!("starts at {past_end}"),
            &format!("WAL ends at {flush}"),
        ],
    );

    // A Hello from another database system for this timeline.
    let foreign = SystemId(0x999);
    let mut stream = sk.connect();
    send(
        &mut stream,
        &ProposerMessage::Hello(hello(foreign, timeline)),
    );
    assert_reason(
        &expect_refusal(&mut stream),
        &[
            "wrong system id",
            &format!("belongs to database system {system}"),
            &format!("the proposer's is {foreign}"),
        ],
    );
    // And one with a segment size the timeline was not created with.
    let mut other_segments = hello(system, timeline);
    other_segments.segment_size_bytes = 1 << 20;
    let mut stream = sk.connect();
    send(&mut stream, &ProposerMessage::Hello(other_segments));
    assert_reason(&expect_refusal(&mut stream), &["1048576-byte segments"]);

    // None of it changed the timeline: term 2, A's WAL, nothing from refused appends.
    let status = sk.timeline_status(timeline);
    assert_eq!((status.term, status.flush_lsn), (Term(2), flush));
    assert_eq!(status.system_id, system);

    // A legitimate proposer continues this same timeline in term 3 (the generator
    // continues from the last acknowledged record; the refused record is dropped).
    let continued = WalGenerator::new(flush, last_record_start, system, SEGMENT_SIZE_BYTES, 12)
        .expect("generator");
    let mut c = ProposerFlow::resume(&sk, system, timeline, continued, status.term_history);
    c.elect(Term(3));
    c.append_in_two_parts();
    let status = sk.timeline_status(timeline);
    assert_eq!(
        (status.term, status.flush_lsn),
        (Term(3), c.generator.end())
    );
    assert_eq!(
        status
            .term_history
            .0
            .iter()
            .map(|s| s.term.0)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    sk.assert_still_serves(3);
}
