//! `sync_safekeepers` against three real safekeeper processes on loopback.
//!
//! The safekeepers are this test binary re-executed into [`safekeeper_process`], which
//! runs `tarn_wal::safekeeper::run` exactly as `tarn safekeeper` does (the wal crate
//! cannot depend on the `tarn` binary). A hand-driven "old proposer" in term 1 leaves
//! WAL flushed beyond the commit LSN the safekeepers know, then goes away, as a crashed
//! compute's proposer would; the sync must return the flushed end and leave the
//! safekeepers reporting it committed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_wal::format::synth::WalGenerator;
use tarn_wal::proposer::{ProposerError, SyncConfig, sync_safekeepers};
use tarn_wal::protocol::blocking::{read_safekeeper_message, write_proposer_message};
use tarn_wal::protocol::{
    AppendRequest, Elected, Hello, PROTOCOL_VERSION, ProposerMessage, SafekeeperMessage,
    TermHistory, TimelineStatus, VoteRequest,
};
use tarn_wal::safekeeper::{SafekeeperConfig, query_status};
use tarn_wal::{Lsn, NodeId, SystemId, Term, TimelineId};

/// Set in a child process: `node id,listen address,data directory`.
const CHILD_ENV: &str = "TARN_WAL_TEST_SAFEKEEPER";
const SYSTEM: SystemId = SystemId(0x5EED_5AFE_0000_0001);
const TIMELINE: TimelineId = TimelineId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
const SEGMENT: u64 = 16 << 20;
/// Where the test timeline starts: a segment start, as a new timeline's does.
const START: Lsn = Lsn(SEGMENT);
/// Bound on a safekeeper process starting to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one answer of a safekeeper to the old proposer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a sync that should succeed (a few elections' worth of round trips).
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Not a test: the body of the safekeeper processes the tests start (this binary run
/// again with [`CHILD_ENV`] set). Without that variable it does nothing.
#[test]
fn safekeeper_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    // Die with the test that started us, even if it is killed outright.
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag of this process.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let mut parts = spec.splitn(3, ',');
    let (Some(id), Some(listen), Some(dir)) = (parts.next(), parts.next(), parts.next()) else {
        panic!("{CHILD_ENV}={spec:?} is not `id,listen,dir`");
    };
    let config = SafekeeperConfig {
        node_id: NodeId(id.parse().expect("node id")),
        listen: listen.parse().expect("listen address"),
        data_dir: PathBuf::from(dir),
        cores: 1,
        first_cpu: 0,
    };
    // Runs until killed; returning at all is a failure to start.
    let outcome = tarn_wal::safekeeper::run(config);
    eprintln!("safekeeper stopped: {outcome:?}");
    std::process::exit(1);
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tarn-wal-sync-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port nobody listens on right now (the kernel's choice, released at once).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One safekeeper process, killed when dropped.
struct Safekeeper {
    addr: SocketAddr,
    child: Option<Child>,
}

impl Safekeeper {
    fn start(id: u64, dir: &TempDir) -> Safekeeper {
        let data_dir = dir.0.join(format!("sk{id}"));
        let log = dir.0.join(format!("sk{id}.log"));
        // The port may be taken between choosing and binding it; then try another.
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("loopback address");
            let log_file = std::fs::File::create(&log).expect("safekeeper log");
            let child = Command::new(std::env::current_exe().expect("test executable"))
                .args(["--exact", "safekeeper_process", "--nocapture"])
                .env(CHILD_ENV, format!("{id},{addr},{}", data_dir.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file)
                .spawn()
                .expect("start a safekeeper process");
            let mut sk = Safekeeper {
                addr,
                child: Some(child),
            };
            if sk.wait_until_answering() {
                return sk;
            }
        }
        panic!(
            "safekeeper {id} did not start; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// True once it answers a status query; false if the process ended first.
    fn wait_until_answering(&mut self) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if query_status(self.addr, Duration::from_millis(500)).is_ok() {
                return true;
            }
            let child = self.child.as_mut().expect("running");
            if child.try_wait().expect("child status").is_some() {
                self.child = None;
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "safekeeper at {} did not answer within {START_TIMEOUT:?}",
            self.addr
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The test timeline here, if this safekeeper has heard of it.
    fn find_timeline(&self) -> Option<TimelineStatus> {
        query_status(self.addr, STATUS_TIMEOUT)
            .expect("status")
            .timelines
            .into_iter()
            .find(|t| t.timeline_id == TIMELINE)
    }

    fn timeline(&self) -> TimelineStatus {
        self.find_timeline()
            .expect("the safekeeper knows the timeline")
    }
}

impl Drop for Safekeeper {
    fn drop(&mut self) {
        self.kill();
    }
}

fn start_safekeepers(dir: &TempDir) -> Vec<Safekeeper> {
    (1..=3).map(|id| Safekeeper::start(id, dir)).collect()
}

fn addresses(sks: &[Safekeeper]) -> Vec<String> {
    sks.iter().map(|s| s.addr.to_string()).collect()
}

fn sync_config(safekeepers: Vec<String>, timeout: Duration) -> SyncConfig {
    SyncConfig {
        safekeepers,
        timeline_id: TIMELINE,
        system_id: SYSTEM,
        segment_size_bytes: SEGMENT,
        timeout,
    }
}

/// The proposer of a compute about to crash: elected in term 1 on every safekeeper,
/// it appends WAL but tells them a commit LSN that lags it (they learn commits lazily).
struct OldProposer {
    connections: Vec<TcpStream>,
    generator: WalGenerator,
}

impl OldProposer {
    fn elect(sks: &[Safekeeper]) -> OldProposer {
        let term = Term(1);
        let mut connections = Vec::new();
        for sk in sks {
            let mut stream = TcpStream::connect_timeout(&sk.addr, REPLY_TIMEOUT).expect("connect");
            stream
                .set_read_timeout(Some(REPLY_TIMEOUT))
                .expect("timeout");
            stream.set_nodelay(true).expect("nodelay");
            let hello = ProposerMessage::Hello(Hello {
                protocol_version: PROTOCOL_VERSION,
                system_id: SYSTEM,
                timeline_id: TIMELINE,
                pg_version: 150_000,
                segment_size_bytes: SEGMENT,
            });
            assert!(matches!(
                call(&mut stream, &hello),
                SafekeeperMessage::HelloReply(_)
            ));
            let vote = call(
                &mut stream,
                &ProposerMessage::VoteRequest(VoteRequest { term }),
            );
            assert!(
                matches!(vote, SafekeeperMessage::Vote(ref v) if v.vote_given),
                "{vote:?}"
            );
            let elected = ProposerMessage::Elected(Elected {
                term,
                term_history: TermHistory::from_pairs(&[(term.0, START.0)]),
            });
            let ack = call(&mut stream, &elected);
            assert!(
                matches!(ack, SafekeeperMessage::ElectedAck(ref a) if a.flush_lsn == START),
                "{ack:?}"
            );
            connections.push(stream);
        }
        let generator = WalGenerator::new(START, None, SYSTEM, SEGMENT, 7).expect("generator");
        OldProposer {
            connections,
            generator,
        }
    }

    /// Appends `records` records to the safekeepers at `to` (indexes), telling them
    /// `commit`; returns the end of the WAL appended.
    fn append(&mut self, records: usize, to: &[usize], commit: Lsn) -> Lsn {
        for i in 0..records {
            self.generator.append_record(100 + 37 * i);
        }
        let (begin, wal) = self.generator.take_bytes();
        let request = AppendRequest {
            term: Term(1),
            begin_lsn: begin,
            commit_lsn: commit,
            wal: Bytes::from(wal),
        };
        let end = request.end_lsn();
        for &i in to {
            let reply = call(
                &mut self.connections[i],
                &ProposerMessage::Append(request.clone()),
            );
            assert!(
                matches!(reply, SafekeeperMessage::AppendResponse(ref r) if r.flush_lsn == end),
                "safekeeper #{i}: {reply:?}"
            );
        }
        end
    }
}

fn call(stream: &mut TcpStream, msg: &ProposerMessage) -> SafekeeperMessage {
    write_proposer_message(stream, msg).expect("send");
    read_safekeeper_message(stream).expect("answer")
}

#[test]
fn sync_returns_the_flushed_end_and_the_safekeepers_learn_it_is_committed() {
    let dir = TempDir::new("flushed");
    let sks = start_safekeepers(&dir);
    let mut old = OldProposer::elect(&sks);
    let acknowledged = old.append(20, &[0, 1, 2], START);
    let end = old.append(30, &[0, 1, 2], acknowledged);
    drop(old);
    for sk in &sks {
        let t = sk.timeline();
        assert_eq!(t.flush_lsn, end);
        assert!(t.commit_lsn < end, "the safekeepers must not know it yet");
    }

    let synced = sync_safekeepers(sync_config(addresses(&sks), SYNC_TIMEOUT)).expect("sync");
    assert_eq!(synced, end);
    for sk in &sks {
        let t = sk.timeline();
        assert!(t.term > Term(1), "a new term fenced the old proposer");
        assert_eq!(t.flush_lsn, end);
        assert!(t.commit_lsn >= end, "{} reports {t:?}", sk.addr);
    }

    // Syncing again changes nothing but the term.
    let again = sync_safekeepers(sync_config(addresses(&sks), SYNC_TIMEOUT)).expect("sync");
    assert_eq!(again, end);
}

#[test]
fn sync_with_a_safekeeper_down_catches_the_laggard_up_from_the_majority() {
    let dir = TempDir::new("down");
    let mut sks = start_safekeepers(&dir);
    let mut old = OldProposer::elect(&sks);
    let everywhere = old.append(10, &[0, 1, 2], START);
    // The rest reached #1 and #2 only: a majority, so it may have been acknowledged.
    let end = old.append(25, &[0, 1], everywhere);
    drop(old);
    sks[0].kill();

    let synced = sync_safekeepers(sync_config(addresses(&sks), SYNC_TIMEOUT)).expect("sync");
    assert_eq!(synced, end, "WAL on a majority is never lost");
    for sk in &sks[1..] {
        let t = sk.timeline();
        assert_eq!(t.flush_lsn, end, "{} holds the end of WAL", sk.addr);
        assert!(t.commit_lsn >= end, "{} reports {t:?}", sk.addr);
    }
}

#[test]
fn sync_of_a_timeline_without_wal_says_so_and_leaves_it_unstarted() {
    let dir = TempDir::new("empty");
    let sks = start_safekeepers(&dir);
    let err =
        sync_safekeepers(sync_config(addresses(&sks), SYNC_TIMEOUT)).expect_err("no WAL to sync");
    assert!(
        matches!(err, ProposerError::EmptyTimeline { timeline_id } if timeline_id == TIMELINE),
        "{err}"
    );
    assert!(err.to_string().contains("holds no WAL"), "{err}");
    // The sync stops once a majority has voted, so one safekeeper may never have
    // heard of the timeline at all.
    for sk in &sks {
        if let Some(t) = sk.find_timeline() {
            assert_eq!(
                t.timeline_start_lsn,
                Lsn::INVALID,
                "{} reports {t:?}",
                sk.addr
            );
        }
    }
}

#[test]
fn sync_without_a_majority_gives_up_saying_how_many_answered() {
    let dir = TempDir::new("minority");
    let sk = Safekeeper::start(1, &dir);
    let unreachable = [free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let mut safekeepers = vec![sk.addr.to_string()];
    safekeepers.extend(unreachable);
    let started = Instant::now();
    let err = sync_safekeepers(sync_config(safekeepers, Duration::from_secs(2)))
        .expect_err("one of three cannot decide");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by its timeout"
    );
    let message = err.to_string();
    assert!(
        matches!(err, ProposerError::SyncTimeout { .. }),
        "{message}"
    );
    assert!(
        message.contains("no majority of safekeepers reachable: 1 of 3 answered"),
        "{message}"
    );
}
