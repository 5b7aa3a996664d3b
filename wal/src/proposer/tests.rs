//! The proposer core against real acceptors, in memory: commit updates without WAL,
//! and sync-safekeepers' completion condition.

use std::collections::VecDeque;

use bytes::Bytes;

use super::core::{Phase, Proposer, ProposerMode, ProposerOutput, ProposerSettings};
use crate::protocol::{
    Hello, MAX_APPEND_WAL_BYTES, PROTOCOL_VERSION, ProposerMessage, SafekeeperMessage, TermHistory,
    WalChunk,
};
use crate::safekeeper::{Acceptor, ControlState, Reply, StorageOp};
use crate::{Lsn, NodeId, SystemId, Term, TimelineId};

const SYSTEM: SystemId = SystemId(42);
const TIMELINE: TimelineId = TimelineId(7);
const SEGMENT: u64 = 16 << 20;
/// Where the test timeline starts.
const START: Lsn = Lsn(SEGMENT);
const PROGRESS_TIMEOUT_MS: u64 = 1000;
/// Bound on deliveries in one `run`: a protocol that keeps talking forever fails.
const MAX_DELIVERIES: usize = 10_000;

fn settings(mode: ProposerMode) -> ProposerSettings {
    ProposerSettings {
        system_id: SYSTEM,
        timeline_id: TIMELINE,
        pg_version: 150_000,
        segment_size_bytes: SEGMENT,
        initial_timeline_start: if mode == ProposerMode::Sync {
            Lsn::INVALID
        } else {
            START
        },
        safekeeper_count: 3,
        max_in_flight_bytes: 1 << 20,
        max_buffered_wal_bytes: 1 << 20,
        progress_timeout_ms: PROGRESS_TIMEOUT_MS,
        election_timeout_ms: 10_000,
        mode,
    }
}

fn hello() -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        system_id: SYSTEM,
        timeline_id: TIMELINE,
        pg_version: 150_000,
        segment_size_bytes: SEGMENT,
    }
}

/// WAL bytes written in `term` at `lsn`: different terms write different bytes, so a
/// divergent tail that survived would show.
fn wal_bytes(term: u64, from: Lsn, len: u64) -> Vec<u8> {
    (from.0..from.0 + len)
        .map(|l| (l.wrapping_mul(31) ^ term.wrapping_mul(0x9E)) as u8)
        .collect()
}

/// One safekeeper: its acceptor and its disk (bytes from `START`).
struct Node {
    acceptor: Acceptor,
    disk: Vec<u8>,
    up: bool,
}

impl Node {
    fn fresh(id: u64) -> Node {
        Node {
            acceptor: Acceptor::create(NodeId(id), &hello()),
            disk: Vec::new(),
            up: true,
        }
    }

    /// A safekeeper that holds WAL written by `pieces` (term, up to LSN), in order, from
    /// `START`, under `history`, promised `term` and knowing `commit`.
    fn with_wal(id: u64, history: &[(u64, u64)], pieces: &[(u64, Lsn)], commit: Lsn) -> Node {
        let mut disk = Vec::new();
        let mut at = START;
        for &(term, end) in pieces {
            disk.extend(wal_bytes(term, at, end.0 - at.0));
            at = end;
        }
        let history = TermHistory::from_pairs(history);
        let control = ControlState {
            system_id: SYSTEM,
            timeline_id: TIMELINE,
            pg_version: 150_000,
            segment_size_bytes: SEGMENT,
            timeline_start_lsn: START,
            term: history.last_term().unwrap_or_default(),
            term_history: history,
            commit_lsn: commit,
            flush_lsn_hint: at,
        };
        Node {
            acceptor: Acceptor::recover(NodeId(id), control, at),
            disk,
            up: true,
        }
    }

    fn bytes(&self, from: Lsn, to: Lsn) -> &[u8] {
        let a = (from.0 - START.0) as usize;
        let b = ((to.0 - START.0) as usize).min(self.disk.len());
        &self.disk[a.min(b)..b]
    }

    fn handle(&mut self, msg: &ProposerMessage) -> SafekeeperMessage {
        let step = match msg {
            ProposerMessage::Hello(h) => self.acceptor.handle_hello(h),
            ProposerMessage::VoteRequest(v) => self.acceptor.handle_vote_request(v),
            ProposerMessage::Elected(e) => self.acceptor.handle_elected(e),
            ProposerMessage::Append(a) => self.acceptor.handle_append(a),
            ProposerMessage::ReadWal(r) => {
                return match self.acceptor.check_read(r, MAX_APPEND_WAL_BYTES) {
                    Ok((start, len)) => SafekeeperMessage::WalChunk(WalChunk {
                        start_lsn: start,
                        wal: Bytes::copy_from_slice(self.bytes(start, start.plus(len as u64))),
                    }),
                    Err(refusal) => SafekeeperMessage::Refused(refusal),
                };
            }
            ProposerMessage::Status => panic!("no status queries here"),
        };
        for op in step.ops {
            match op {
                StorageOp::PersistControl(_) => {}
                StorageOp::TruncateWal(lsn) => self.disk.truncate((lsn.0 - START.0) as usize),
                StorageOp::WriteWal { lsn, wal } => {
                    let off = (lsn.0 - START.0) as usize;
                    assert_eq!(off, self.disk.len(), "writes are contiguous");
                    self.disk.extend_from_slice(&wal);
                }
            }
        }
        match step.reply {
            Reply::Now(m) => m,
            // Every write is "durable" at once; the bytes carry no records to track.
            Reply::AfterFlush => {
                let end = self.acceptor.write_lsn();
                self.acceptor.on_flushed(end)
            }
        }
    }
}

/// A proposer and three safekeepers exchanging messages in order, one connection each.
struct Cluster {
    proposer: Proposer,
    nodes: Vec<Node>,
    to_safekeeper: Vec<VecDeque<ProposerMessage>>,
    to_proposer: Vec<VecDeque<SafekeeperMessage>>,
    /// Answers from these safekeepers wait until released.
    held: Vec<bool>,
    /// Every append sent: (to, begin, end, commit LSN).
    appends: Vec<(usize, Lsn, Lsn, Lsn)>,
    outputs: Vec<ProposerOutput>,
    now_ms: u64,
}

impl Cluster {
    fn new(mode: ProposerMode, nodes: Vec<Node>) -> Cluster {
        let n = nodes.len();
        let mut c = Cluster {
            proposer: Proposer::new(settings(mode), 0),
            nodes,
            to_safekeeper: vec![VecDeque::new(); n],
            to_proposer: vec![VecDeque::new(); n],
            held: vec![false; n],
            appends: Vec::new(),
            outputs: Vec::new(),
            now_ms: 0,
        };
        for i in 0..n {
            if c.nodes[i].up {
                c.proposer.on_connected(i);
            }
        }
        c.collect();
        c
    }

    fn collect(&mut self) {
        for out in self.proposer.drain_outputs() {
            match &out {
                ProposerOutput::Send { to, msg } => {
                    if let ProposerMessage::Append(a) = msg {
                        self.appends
                            .push((*to, a.begin_lsn, a.end_lsn(), a.commit_lsn));
                    }
                    if self.nodes[*to].up {
                        self.to_safekeeper[*to].push_back(msg.clone());
                    }
                }
                ProposerOutput::Reconnect { peer, reason } => {
                    panic!("unexpected reconnect of #{peer}: {reason}")
                }
                _ => {}
            }
            self.outputs.push(out);
        }
    }

    /// Delivers messages until nothing moves.
    fn run(&mut self) {
        for _ in 0..MAX_DELIVERIES {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                if let Some(msg) = self.to_safekeeper[i].pop_front() {
                    let reply = self.nodes[i].handle(&msg);
                    self.to_proposer[i].push_back(reply);
                    moved = true;
                }
                if !self.held[i]
                    && let Some(msg) = self.to_proposer[i].pop_front()
                {
                    self.proposer.on_message(i, msg);
                    self.collect();
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
        panic!("messages still flowing after {MAX_DELIVERIES} deliveries");
    }

    fn release(&mut self, node: usize) {
        self.held[node] = false;
        self.run();
    }

    fn wal(&mut self, len: u64) {
        let start = self.proposer.wal_end();
        let term = self.proposer.term().0;
        self.proposer
            .on_wal(start, Bytes::from(wal_bytes(term, start, len)))
            .unwrap_or_else(|e| panic!("{e}"));
        self.collect();
    }

    fn tick(&mut self, ms: u64) {
        self.now_ms += ms;
        self.proposer.on_tick(self.now_ms);
        self.collect();
    }

    /// Appends without WAL sent to `node` so far, with their commit LSNs.
    fn commit_updates(&self, node: usize) -> Vec<Lsn> {
        self.appends
            .iter()
            .filter(|&&(to, begin, end, _)| to == node && begin == end)
            .map(|&(_, _, _, commit)| commit)
            .collect()
    }

    fn commit_on(&self, node: usize) -> Lsn {
        self.nodes[node].acceptor.control().commit_lsn
    }
}

fn streaming_cluster() -> Cluster {
    let mut c = Cluster::new(
        ProposerMode::Stream,
        (0..3).map(|i| Node::fresh(i + 1)).collect(),
    );
    c.run();
    assert_eq!(*c.proposer.phase(), Phase::Elected);
    c
}

#[test]
fn caught_up_safekeepers_learn_the_commit_lsn_without_more_wal() {
    let mut c = streaming_cluster();
    c.wal(100);
    c.run();
    // A streaming proposer sends commit updates on its tick.
    c.tick(1);
    c.run();
    let end = START.plus(100);
    assert_eq!(c.proposer.commit_lsn(), end);
    // The appends that carried the WAL went out before it was committed; only the
    // empty ones after can have told the safekeepers.
    for node in 0..3 {
        assert_eq!(c.commit_on(node), end, "safekeeper #{node}");
        assert_eq!(c.commit_updates(node).last(), Some(&end));
    }
    // Quiet now: the answers to the commit updates asked for nothing more.
    let sent = c.appends.len();
    c.tick(10);
    c.run();
    assert_eq!(c.appends.len(), sent);
    assert!(c.to_safekeeper.iter().all(VecDeque::is_empty));
}

#[test]
fn commit_updates_coalesce_while_one_is_unanswered() {
    let mut c = streaming_cluster();
    c.wal(100);
    c.run();
    c.tick(1);
    c.run();
    let c1 = START.plus(100);
    let before = c.commit_updates(2).len();
    // Safekeeper #2 stops answering (it still receives and handles everything).
    c.held[2] = true;
    c.wal(100);
    c.run();
    c.tick(1);
    c.run();
    let c2 = START.plus(200);
    assert_eq!(c.proposer.commit_lsn(), c2);
    assert_eq!(c.commit_updates(2).len(), before + 1, "one update for #2");
    c.wal(100);
    c.run();
    c.tick(1);
    c.run();
    let c3 = START.plus(300);
    assert_eq!(c.proposer.commit_lsn(), c3);
    // #2 owes an answer to the update it got, so c3 waits for it.
    assert_eq!(
        c.commit_updates(2).len(),
        before + 1,
        "no second update yet"
    );
    assert!(c.commit_on(2) >= c1);
    c.release(2);
    c.tick(1);
    c.run();
    assert_eq!(c.commit_updates(2).last(), Some(&c3));
    assert_eq!(c.commit_updates(2).len(), before + 2);
    assert_eq!(c.commit_on(2), c3);
}

#[test]
fn an_idle_spell_does_not_make_the_next_append_look_stuck() {
    let mut c = streaming_cluster();
    c.wal(100);
    c.run();
    c.tick(5 * PROGRESS_TIMEOUT_MS);
    for node in 0..3 {
        c.held[node] = true;
    }
    c.wal(100);
    c.run();
    // Answers are due from now on, not since the last answer long ago (a reconnect
    // fails the test in `collect`).
    c.tick(PROGRESS_TIMEOUT_MS / 2);
    for node in 0..3 {
        c.release(node);
    }
    assert_eq!(c.proposer.commit_lsn(), START.plus(200));
}

fn sync_cluster(nodes: Vec<Node>) -> Cluster {
    let mut c = Cluster::new(ProposerMode::Sync, nodes);
    c.run();
    c
}

#[test]
fn sync_of_an_empty_timeline_stops_without_starting_it() {
    let c = sync_cluster((0..3).map(|i| Node::fresh(i + 1)).collect());
    assert!(c.outputs.contains(&ProposerOutput::TimelineEmpty));
    assert!(matches!(c.proposer.phase(), Phase::Stopped(_)));
    assert_eq!(c.proposer.synced_lsn(), None);
    for node in &c.nodes {
        assert_eq!(node.acceptor.control().timeline_start_lsn, Lsn::INVALID);
        assert!(node.acceptor.control().term_history.0.is_empty());
    }
}

#[test]
fn sync_ends_where_the_flushed_wal_ends_and_a_majority_knows_it_committed() {
    let commit = START.plus(100);
    let end = START.plus(400);
    let nodes = (0..3)
        .map(|i| Node::with_wal(i + 1, &[(1, START.0)], &[(1, end)], commit))
        .collect();
    let mut c = Cluster::new(ProposerMode::Sync, nodes);
    // Hold every answer to appends: elected and committed is not enough.
    c.run_until_committed();
    assert_eq!(c.proposer.term(), Term(2));
    assert_eq!(c.proposer.term_start_lsn(), end);
    assert_eq!(c.proposer.commit_lsn(), end);
    assert_eq!(
        c.proposer.synced_lsn(),
        None,
        "no safekeeper has acknowledged the commit yet"
    );
    c.held = vec![false; 3];
    c.run();
    assert_eq!(c.proposer.synced_lsn(), Some(end));
    for node in 0..3 {
        assert_eq!(c.commit_on(node), end, "safekeeper #{node}");
    }
}

impl Cluster {
    /// Delivers one message at a time until the proposer's commit LSN reaches its term
    /// start, then holds every answer from there on.
    fn run_until_committed(&mut self) {
        for _ in 0..MAX_DELIVERIES {
            let p = &self.proposer;
            if *p.phase() == Phase::Elected && p.commit_lsn() >= p.term_start_lsn() {
                self.held = vec![true; self.nodes.len()];
                self.run();
                return;
            }
            let n = self.nodes.len();
            if let Some(i) = (0..n).find(|&i| !self.to_safekeeper[i].is_empty()) {
                let msg = self.to_safekeeper[i]
                    .pop_front()
                    .unwrap_or_else(|| unreachable!());
                let reply = self.nodes[i].handle(&msg);
                self.to_proposer[i].push_back(reply);
            } else if let Some(i) = (0..n).find(|&i| !self.to_proposer[i].is_empty()) {
                let msg = self.to_proposer[i]
                    .pop_front()
                    .unwrap_or_else(|| unreachable!());
                self.proposer.on_message(i, msg);
                self.collect();
            } else {
                panic!("stalled before committing");
            }
        }
        panic!("not committed after {MAX_DELIVERIES} deliveries");
    }
}

#[test]
fn sync_with_a_safekeeper_down_includes_the_donors_uncommitted_wal() {
    let commit = START.plus(100);
    let end = START.plus(500);
    let mut down = Node::with_wal(2, &[(1, START.0)], &[(1, START.plus(300))], commit);
    down.up = false;
    let nodes = vec![
        Node::with_wal(1, &[(1, START.0)], &[(1, end)], commit),
        down,
        // Lags the donor: it is caught up from the donor's disk.
        Node::with_wal(3, &[(1, START.0)], &[(1, START.plus(200))], commit),
    ];
    let c = sync_cluster(nodes);
    assert_eq!(c.proposer.donor(), Some(0));
    assert_eq!(c.proposer.synced_lsn(), Some(end));
    assert_eq!(c.nodes[2].acceptor.flush_lsn(), end);
    assert_eq!(c.nodes[2].bytes(START, end), c.nodes[0].bytes(START, end));
    assert_eq!(c.commit_on(0), end);
    assert_eq!(c.commit_on(2), end);
    // The one that was down knows nothing new (and will learn it from the next term).
    assert_eq!(c.commit_on(1), commit);
    assert!(
        c.appends.iter().all(|&(to, ..)| to != 1),
        "nothing was sent to the safekeeper that is down"
    );
}

#[test]
fn sync_truncates_a_divergent_minority_tail_and_keeps_the_majoritys_wal() {
    // Term 1 wrote up to 280 on #3 only beyond 200; term 2 continued term 1 at 200 and
    // got to 300 on #1 and #2 (beyond the commit LSN 100 they learned). Term 2's WAL
    // on the majority may have been acknowledged to clients; #3's tail never was.
    let commit = START.plus(100);
    let fork = START.plus(200);
    let end = START.plus(300);
    let majority = |id| {
        Node::with_wal(
            id,
            &[(1, START.0), (2, fork.0)],
            &[(1, fork), (2, end)],
            commit,
        )
    };
    let nodes = vec![
        majority(1),
        majority(2),
        Node::with_wal(3, &[(1, START.0)], &[(1, START.plus(280))], commit),
    ];
    let divergent = nodes[2].bytes(fork, START.plus(280)).to_vec();
    let c = sync_cluster(nodes);
    assert_eq!(c.proposer.synced_lsn(), Some(end));
    assert_eq!(
        c.proposer.history().0.last().map(|s| (s.term, s.lsn)),
        Some((Term(3), end))
    );
    for node in 0..3 {
        assert_eq!(
            c.nodes[node].acceptor.flush_lsn(),
            end,
            "safekeeper #{node}"
        );
        assert_eq!(
            c.nodes[node].bytes(START, end),
            c.nodes[0].bytes(START, end),
            "safekeeper #{node} holds the majority's WAL"
        );
        assert_eq!(c.commit_on(node), end, "safekeeper #{node}");
    }
    assert_ne!(c.nodes[2].bytes(fork, START.plus(280)), &divergent[..]);
}

#[test]
fn a_stream_proposer_still_starts_an_empty_timeline() {
    let c = streaming_cluster();
    assert_eq!(c.proposer.term_start_lsn(), START);
    assert!(!c.outputs.contains(&ProposerOutput::TimelineEmpty));
    for node in &c.nodes {
        assert_eq!(node.acceptor.control().timeline_start_lsn, START);
    }
}
