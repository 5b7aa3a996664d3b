//! The proposer as a pure state machine: it is fed connection events, safekeeper
//! messages, WAL from Postgres and clock ticks, and answers with outputs (messages to
//! send, connections to drop, where to start streaming, the new commit LSN). No IO here,
//! so the simulation drives exactly this code.
//!
//! Phases: greet a majority, pick a term above every term seen, win a majority of votes,
//! take the most advanced voter's WAL (highest last-log term, then flush LSN) as the
//! start of the new term, announce the history to every safekeeper, then stream. The
//! commit LSN is the highest LSN a majority acknowledged *in this term* (never below the
//! term's start), and that is exactly what Postgres is told is flushed.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::protocol::{
    AppendRequest, Elected, Hello, HelloReply, MAX_APPEND_WAL_BYTES, PROTOCOL_VERSION,
    ProposerMessage, ReadWalRequest, SafekeeperMessage, TermHistory, TermSwitch, VoteRequest,
    VoteResponse, WalChunk,
};
use crate::{Lsn, SystemId, Term, TimelineId};

/// Index of a safekeeper in the proposer's configuration.
pub type PeerIndex = usize;

#[derive(Clone, Debug)]
pub struct ProposerSettings {
    pub system_id: SystemId,
    pub timeline_id: TimelineId,
    pub pg_version: u32,
    pub segment_size_bytes: u64,
    /// Where WAL starts if no safekeeper has any yet (a new timeline).
    pub initial_timeline_start: Lsn,
    pub safekeeper_count: usize,
    /// Unacknowledged bytes in flight to one safekeeper; bounds memory and lets a slow
    /// safekeeper fall behind without stalling the others.
    pub max_in_flight_bytes: u64,
    /// WAL kept in memory for safekeepers that lag; older WAL is read back from a
    /// safekeeper that has it.
    pub max_buffered_wal_bytes: u64,
    /// A safekeeper that holds unacknowledged WAL this long without progress is
    /// reconnected (its connection is presumed stuck).
    pub progress_timeout_ms: u64,
    /// Giving up on an election that does not complete in this time lets a restarted
    /// proposer try again with a higher term.
    pub election_timeout_ms: u64,
    pub mode: ProposerMode,
}

/// What the proposer is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProposerMode {
    /// Postgres's standby: stream its WAL from the term's start on.
    #[default]
    Stream,
    /// No Postgres: only fix the end of the timeline's WAL (see
    /// [`Proposer::synced_lsn`]). A timeline no voter holds is not started here
    /// ([`ProposerOutput::TimelineEmpty`]): where it starts is for a compute to say.
    Sync,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposerOutput {
    Send {
        to: PeerIndex,
        msg: ProposerMessage,
    },
    /// Drop this connection and open a new one, then call `on_connected`.
    Reconnect {
        peer: PeerIndex,
        reason: String,
    },
    /// Elected: stream WAL from Postgres starting here.
    StartStreaming {
        from: Lsn,
    },
    /// The quorum commit LSN advanced: report it to Postgres as flushed.
    Committed {
        commit_lsn: Lsn,
    },
    /// The proposer cannot continue (it lost its term, or its election failed).
    Stopped {
        reason: String,
    },
    /// [`ProposerMode::Sync`] only: a majority voted and none of them holds any WAL of
    /// the timeline, so nothing was ever committed on it. The proposer has stopped
    /// without announcing its election (which would set where the timeline starts).
    TimelineEmpty,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Greeting,
    Campaigning,
    Elected,
    Stopped(String),
}

#[derive(Clone, Debug, Default)]
struct Peer {
    connected: bool,
    greeting: Option<HelloReply>,
    vote_requested: bool,
    voted_for_us: bool,
    /// Got an ElectedAck in our term: `flush_lsn` is meaningful and we stream to it.
    following: bool,
    flush_lsn: Lsn,
    next_lsn: Lsn,
    /// Highest commit LSN carried by an append sent to this peer in our term.
    commit_sent: Lsn,
    /// Highest commit LSN this peer reported in our term: what it knows is committed.
    commit_acked: Lsn,
    /// LSN of a ReadWal we asked this peer (as donor) for, if any, and when.
    read_in_flight: Option<Lsn>,
    read_sent_ms: u64,
    last_progress_ms: u64,
}

pub struct Proposer {
    settings: ProposerSettings,
    phase: Phase,
    term: Term,
    peers: Vec<Peer>,
    votes: Vec<Option<VoteResponse>>,
    history: TermHistory,
    term_start_lsn: Lsn,
    /// The voter whose WAL this term continues.
    donor: Option<PeerIndex>,
    /// End of WAL known to the proposer (from the donor, then from Postgres).
    wal_end: Lsn,
    commit_lsn: Lsn,
    /// Highest commit LSN learned from any safekeeper; passed on in appends.
    known_commit_lsn: Lsn,
    buffer: WalBuffer,
    outputs: Vec<ProposerOutput>,
    now_ms: u64,
    campaign_started_ms: u64,
}

impl Proposer {
    pub fn new(settings: ProposerSettings, now_ms: u64) -> Proposer {
        let n = settings.safekeeper_count;
        let buffer = WalBuffer::new(settings.max_buffered_wal_bytes);
        Proposer {
            settings,
            phase: Phase::Greeting,
            term: Term(0),
            peers: vec![Peer::default(); n],
            votes: vec![None; n],
            history: TermHistory::default(),
            term_start_lsn: Lsn::INVALID,
            donor: None,
            wal_end: Lsn::INVALID,
            commit_lsn: Lsn::INVALID,
            known_commit_lsn: Lsn::INVALID,
            buffer,
            outputs: Vec::new(),
            now_ms,
            campaign_started_ms: now_ms,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn commit_lsn(&self) -> Lsn {
        self.commit_lsn
    }
    pub fn term_start_lsn(&self) -> Lsn {
        self.term_start_lsn
    }
    pub fn donor(&self) -> Option<PeerIndex> {
        self.donor
    }
    pub fn wal_end(&self) -> Lsn {
        self.wal_end
    }
    pub fn history(&self) -> &TermHistory {
        &self.history
    }
    pub fn mode(&self) -> ProposerMode {
        self.settings.mode
    }

    /// The end of the timeline's WAL once it is settled: elected, everything up to the
    /// term's start committed in this term, and a majority of safekeepers both hold
    /// that WAL and have acknowledged an append telling them it is committed (so they
    /// report it as committed, and the pageserver may read up to it). Every WAL byte
    /// ever acknowledged to a client lies below it: committed WAL is on a majority,
    /// which every majority of voters meets, and the donor holds the most of any voter.
    pub fn synced_lsn(&self) -> Option<Lsn> {
        let end = self.term_start_lsn;
        let settled = self.phase == Phase::Elected
            && self.commit_lsn != Lsn::INVALID
            && self.commit_lsn >= end;
        (settled && self.peers_knowing_commit(end) >= self.quorum()).then_some(end)
    }

    /// Safekeepers that follow this term, hold WAL up to `lsn` and know it committed.
    pub fn peers_knowing_commit(&self, lsn: Lsn) -> usize {
        self.peers
            .iter()
            .filter(|p| p.connected && p.following && p.flush_lsn >= lsn && p.commit_acked >= lsn)
            .count()
    }

    /// Connected safekeepers (the ones worth waiting for a little).
    pub fn connected_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.connected).count()
    }

    /// Safekeepers that answered our `Hello` on their current connection.
    pub fn greeted_peers(&self) -> usize {
        self.peers.iter().filter(|p| p.greeting.is_some()).count()
    }

    /// Votes for our term so far.
    pub fn votes_received(&self) -> usize {
        self.votes.iter().flatten().count()
    }

    /// Flush LSN each safekeeper acknowledged in this term (None if not following).
    pub fn peer_flush_lsns(&self) -> Vec<Option<Lsn>> {
        self.peers
            .iter()
            .map(|p| p.following.then_some(p.flush_lsn))
            .collect()
    }

    /// Takes the outputs produced so far.
    pub fn drain_outputs(&mut self) -> Vec<ProposerOutput> {
        std::mem::take(&mut self.outputs)
    }

    fn quorum(&self) -> usize {
        self.settings.safekeeper_count / 2 + 1
    }

    fn stopped(&self) -> bool {
        matches!(self.phase, Phase::Stopped(_))
    }

    fn stop(&mut self, reason: String) {
        if !self.stopped() {
            self.phase = Phase::Stopped(reason.clone());
            self.outputs.push(ProposerOutput::Stopped { reason });
        }
    }

    fn send(&mut self, to: PeerIndex, msg: ProposerMessage) {
        self.outputs.push(ProposerOutput::Send { to, msg });
    }

    fn reconnect(&mut self, peer: PeerIndex, reason: String) {
        self.reset_peer(peer);
        self.outputs
            .push(ProposerOutput::Reconnect { peer, reason });
    }

    fn reset_peer(&mut self, peer: PeerIndex) {
        self.peers[peer] = Peer::default();
        // Anyone waiting on a read from this donor must find another one.
        self.pump_all();
    }

    pub fn on_connected(&mut self, peer: PeerIndex) {
        if self.stopped() || peer >= self.peers.len() {
            return;
        }
        self.peers[peer] = Peer {
            connected: true,
            last_progress_ms: self.now_ms,
            ..Peer::default()
        };
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            system_id: self.settings.system_id,
            timeline_id: self.settings.timeline_id,
            pg_version: self.settings.pg_version,
            segment_size_bytes: self.settings.segment_size_bytes,
        };
        self.send(peer, ProposerMessage::Hello(hello));
    }

    pub fn on_disconnected(&mut self, peer: PeerIndex) {
        if peer < self.peers.len() {
            self.reset_peer(peer);
        }
    }

    pub fn on_tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if self.stopped() {
            return;
        }
        if self.phase != Phase::Elected {
            if now_ms.saturating_sub(self.campaign_started_ms) > self.settings.election_timeout_ms {
                self.stop(format!(
                    "election did not complete within {} ms (term {}): not enough safekeepers answered or another proposer competes",
                    self.settings.election_timeout_ms, self.term
                ));
            }
            return;
        }
        let timeout = self.settings.progress_timeout_ms;
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if !p.connected {
                continue;
            }
            // Waiting for an acknowledgement, for the handshake to finish, or for a
            // donor read: a connection that stays silent that long is presumed stuck.
            let waiting = !p.following || Self::awaits_answer(p);
            let read_stuck =
                p.read_in_flight.is_some() && now_ms.saturating_sub(p.read_sent_ms) > timeout;
            if read_stuck || (waiting && now_ms.saturating_sub(p.last_progress_ms) > timeout) {
                self.reconnect(i, format!("no answer for {timeout} ms"));
            }
        }
        // A streaming proposer tells caught-up peers new commit LSNs here, once a tick,
        // not after every commit: under load the next WAL append carries them anyway,
        // and an extra append per commit cost ~9 % of pgbench's throughput.
        self.flush_commit_updates();
    }

    pub fn on_message(&mut self, from: PeerIndex, msg: SafekeeperMessage) {
        if self.stopped() || from >= self.peers.len() || !self.peers[from].connected {
            return;
        }
        match msg {
            SafekeeperMessage::HelloReply(m) => self.on_hello_reply(from, m),
            SafekeeperMessage::Vote(m) => self.on_vote(from, m),
            SafekeeperMessage::ElectedAck(m) => {
                if self.check_term(from, m.term) && self.phase == Phase::Elected {
                    let p = &mut self.peers[from];
                    if !p.following {
                        p.following = true;
                        p.flush_lsn = m.flush_lsn;
                        p.next_lsn = m.flush_lsn;
                        p.commit_sent = m.commit_lsn;
                        p.commit_acked = m.commit_lsn;
                        p.last_progress_ms = self.now_ms;
                    }
                    self.known_commit_lsn = self.known_commit_lsn.max(m.commit_lsn);
                    self.update_commit();
                    self.pump_all();
                    self.send_commit_updates();
                }
            }
            SafekeeperMessage::AppendResponse(m) => {
                if self.check_term(from, m.term) && self.peers[from].following {
                    let p = &mut self.peers[from];
                    if m.flush_lsn > p.flush_lsn {
                        p.flush_lsn = m.flush_lsn;
                        p.last_progress_ms = self.now_ms;
                    }
                    if m.commit_lsn > p.commit_acked {
                        p.commit_acked = m.commit_lsn;
                        p.last_progress_ms = self.now_ms;
                    }
                    self.update_commit();
                    // More WAL on this peer may make it a donor for a laggard.
                    self.pump_all();
                    self.trim_buffer();
                    // The answer may close the one commit update allowed in flight.
                    self.send_commit_updates();
                }
            }
            SafekeeperMessage::WalChunk(m) => self.on_wal_chunk(from, m),
            SafekeeperMessage::Refused(r) => {
                if r.term > self.term && self.phase != Phase::Greeting {
                    self.stop(format!(
                        "lost term {}: safekeeper #{from} is in term {} ({})",
                        self.term, r.term, r.reason
                    ));
                } else {
                    self.reconnect(from, format!("safekeeper refused: {}", r.reason));
                }
            }
            SafekeeperMessage::Status(_) => {}
        }
    }

    /// A term above ours anywhere means another proposer won: stop, saying why.
    fn check_term(&mut self, from: PeerIndex, term: Term) -> bool {
        if term > self.term {
            self.stop(format!(
                "lost term {}: safekeeper #{from} has promised term {term} to a newer proposer",
                self.term
            ));
            return false;
        }
        term == self.term
    }

    fn on_hello_reply(&mut self, from: PeerIndex, m: HelloReply) {
        let their_term = m.term;
        self.peers[from].greeting = Some(m);
        match self.phase {
            Phase::Greeting => {
                let greeted: Vec<&HelloReply> = self
                    .peers
                    .iter()
                    .filter_map(|p| p.greeting.as_ref())
                    .collect();
                if greeted.len() >= self.quorum() {
                    let max_term = greeted.iter().map(|g| g.term).max().unwrap_or_default();
                    self.term = Term(max_term.0 + 1);
                    self.phase = Phase::Campaigning;
                    self.campaign_started_ms = self.now_ms;
                    for i in 0..self.peers.len() {
                        if self.peers[i].greeting.is_some() {
                            self.request_vote(i);
                        }
                    }
                }
            }
            Phase::Campaigning | Phase::Elected => {
                if their_term > self.term {
                    self.check_term(from, their_term);
                } else {
                    self.request_vote(from);
                }
            }
            Phase::Stopped(_) => {}
        }
    }

    fn request_vote(&mut self, peer: PeerIndex) {
        if !self.peers[peer].vote_requested {
            self.peers[peer].vote_requested = true;
            self.send(
                peer,
                ProposerMessage::VoteRequest(VoteRequest { term: self.term }),
            );
        }
    }

    fn on_vote(&mut self, from: PeerIndex, m: VoteResponse) {
        if m.term > self.term {
            self.check_term(from, m.term);
            return;
        }
        match self.phase {
            // A refusal in our own term is a duplicate of a vote we already have, or a
            // competitor with the same term; either way it is not a vote.
            Phase::Campaigning if m.vote_given && m.term == self.term => {
                self.peers[from].voted_for_us = true;
                self.votes[from] = Some(m);
                if self.votes.iter().flatten().count() >= self.quorum() {
                    self.become_elected();
                }
            }
            // A safekeeper that joins after the election has promised our term (or is
            // below it), so it can follow our history.
            Phase::Elected if m.term == self.term || m.vote_given => self.announce(from),
            _ => {}
        }
    }

    fn become_elected(&mut self) {
        let donor = self
            .votes
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
            .max_by_key(|(_, v)| (v.term_history.last_term(), v.flush_lsn))
            .map(|(i, v)| (i, v.clone()));
        let Some((donor_index, donor)) = donor else {
            return;
        };
        if donor.term_history.0.is_empty() && self.settings.mode == ProposerMode::Sync {
            // No voter holds WAL, and every majority of safekeepers meets this one: the
            // timeline has no committed WAL. Announcing would make the safekeepers
            // start it at an LSN nobody chose, so stop here instead.
            self.phase = Phase::Stopped(format!(
                "timeline {} holds no WAL on a majority of safekeepers",
                self.settings.timeline_id
            ));
            self.outputs.push(ProposerOutput::TimelineEmpty);
            return;
        }
        self.donor = Some(donor_index);
        for v in self.votes.iter().flatten() {
            self.known_commit_lsn = self.known_commit_lsn.max(v.commit_lsn);
        }
        let (mut history, start) = if donor.term_history.0.is_empty() {
            (TermHistory::default(), self.settings.initial_timeline_start)
        } else {
            (donor.term_history.up_to(donor.flush_lsn), donor.flush_lsn)
        };
        history.0.push(TermSwitch {
            term: self.term,
            lsn: start,
        });
        self.history = history;
        self.term_start_lsn = start;
        self.wal_end = start;
        self.buffer.clear();
        self.phase = Phase::Elected;
        self.outputs
            .push(ProposerOutput::StartStreaming { from: start });
        for i in 0..self.peers.len() {
            if self.peers[i].voted_for_us {
                self.announce(i);
            }
        }
    }

    fn announce(&mut self, peer: PeerIndex) {
        let msg = Elected {
            term: self.term,
            term_history: self.history.clone(),
        };
        self.send(peer, ProposerMessage::Elected(msg));
    }

    /// WAL from Postgres, contiguous with what came before.
    pub fn on_wal(&mut self, start: Lsn, wal: Bytes) -> Result<(), String> {
        if self.phase != Phase::Elected {
            return Err(format!(
                "WAL at {start} arrived before the proposer was elected"
            ));
        }
        if start != self.wal_end {
            return Err(format!(
                "WAL from Postgres starts at {start}, expected {}",
                self.wal_end
            ));
        }
        self.wal_end = start.plus(wal.len() as u64);
        self.buffer.insert(start, wal);
        self.pump_all();
        self.trim_buffer();
        Ok(())
    }

    fn on_wal_chunk(&mut self, from: PeerIndex, m: WalChunk) {
        if self.peers[from].read_in_flight.take().is_none() || m.wal.is_empty() {
            return;
        }
        // Hand the chunk straight to the laggards waiting for it rather than buffering
        // it: the buffer holds the newest WAL, which donor reads are older than.
        let end = m.start_lsn.plus(m.wal.len() as u64);
        let commit_lsn = self.commit_lsn.max(self.known_commit_lsn);
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            if !(p.connected && p.following && p.next_lsn >= m.start_lsn && p.next_lsn < end) {
                continue;
            }
            let offset = (p.next_lsn.0 - m.start_lsn.0) as usize;
            let begin = p.next_lsn;
            self.send_append(i, begin, commit_lsn, m.wal.slice(offset..));
        }
        self.pump_all();
        self.send_commit_updates();
    }

    /// Whether this peer owes us an answer: unacknowledged WAL, or an unacknowledged
    /// commit LSN.
    fn awaits_answer(p: &Peer) -> bool {
        p.next_lsn > p.flush_lsn || p.commit_sent > p.commit_acked
    }

    fn send_append(&mut self, peer: PeerIndex, begin: Lsn, commit_lsn: Lsn, wal: Bytes) {
        let now = self.now_ms;
        let p = &mut self.peers[peer];
        // The progress timeout measures how long a peer has owed us an answer, so the
        // clock starts now if it owed nothing (not at its last answer, which may be
        // long ago after an idle spell).
        if !Self::awaits_answer(p) {
            p.last_progress_ms = now;
        }
        p.next_lsn = begin.plus(wal.len() as u64);
        p.commit_sent = p.commit_sent.max(commit_lsn);
        let append = AppendRequest {
            term: self.term,
            begin_lsn: begin,
            commit_lsn,
            wal,
        };
        self.send(peer, ProposerMessage::Append(append));
    }

    /// After a commit or an answer: a sync proposer tells peers new commit LSNs at once
    /// ([`Self::flush_commit_updates`]); a streaming one waits for the next tick.
    fn send_commit_updates(&mut self) {
        // A sync proposer has no WAL to carry its commit: it tells peers at once.
        if self.settings.mode == ProposerMode::Sync {
            self.flush_commit_updates();
        }
    }

    /// Tells caught-up peers a commit LSN they have not been sent, with an append that
    /// carries no WAL (peers still receiving WAL learn it from that WAL's appends). At
    /// most one commit-carrying append is unanswered per peer, so the answer to one
    /// never triggers another unless the commit LSN moved meanwhile.
    fn flush_commit_updates(&mut self) {
        if self.phase != Phase::Elected {
            return;
        }
        let commit_lsn = self.commit_lsn.max(self.known_commit_lsn);
        for i in 0..self.peers.len() {
            let p = &self.peers[i];
            let caught_up = p.connected && p.following && p.next_lsn >= self.wal_end;
            if caught_up && commit_lsn > p.commit_sent && p.commit_acked >= p.commit_sent {
                let begin = p.next_lsn;
                self.send_append(i, begin, commit_lsn, Bytes::new());
            }
        }
    }

    fn pump_all(&mut self) {
        for i in 0..self.peers.len() {
            self.pump(i);
        }
    }

    /// Sends a peer as much WAL as its in-flight window allows.
    fn pump(&mut self, peer: PeerIndex) {
        if self.phase != Phase::Elected {
            return;
        }
        loop {
            let p = &self.peers[peer];
            if !p.connected || !p.following || p.next_lsn >= self.wal_end {
                return;
            }
            let in_flight = p.next_lsn.0 - p.flush_lsn.0.min(p.next_lsn.0);
            if in_flight >= self.settings.max_in_flight_bytes {
                return;
            }
            let next = p.next_lsn;
            match self.buffer.get(next, MAX_APPEND_WAL_BYTES) {
                Some(wal) => {
                    let commit_lsn = self.commit_lsn.max(self.known_commit_lsn);
                    self.send_append(peer, next, commit_lsn, wal);
                }
                None => {
                    self.request_from_donor(next);
                    return;
                }
            }
        }
    }

    /// WAL a lagging peer needs is no longer (or never was) in memory: ask a
    /// safekeeper that holds it in our term.
    fn request_from_donor(&mut self, start: Lsn) {
        if self.peers.iter().any(|p| p.read_in_flight == Some(start)) {
            return;
        }
        let end = self.buffer.next_start_after(start).unwrap_or(self.wal_end);
        let end = end.min(start.plus(MAX_APPEND_WAL_BYTES as u64));
        let donor = (0..self.peers.len()).find(|&i| {
            let p = &self.peers[i];
            p.connected && p.following && p.flush_lsn > start && p.read_in_flight.is_none()
        });
        if let Some(d) = donor {
            self.peers[d].read_in_flight = Some(start);
            self.peers[d].read_sent_ms = self.now_ms;
            self.send(
                d,
                ProposerMessage::ReadWal(ReadWalRequest {
                    start_lsn: start,
                    end_lsn: end,
                }),
            );
        }
    }

    fn update_commit(&mut self) {
        let mut flushes: Vec<Lsn> = self
            .peers
            .iter()
            .filter(|p| p.following)
            .map(|p| p.flush_lsn)
            .collect();
        if flushes.len() < self.quorum() {
            return;
        }
        flushes.sort_unstable_by(|a, b| b.cmp(a));
        let quorum_flush = flushes[self.quorum() - 1];
        // Acknowledgements below the term start may be of WAL that the new term has not
        // yet confirmed on a majority under its own history; only the term's own
        // progress commits.
        if quorum_flush >= self.term_start_lsn && quorum_flush > self.commit_lsn {
            self.commit_lsn = quorum_flush;
            self.known_commit_lsn = self.known_commit_lsn.max(quorum_flush);
            self.outputs.push(ProposerOutput::Committed {
                commit_lsn: quorum_flush,
            });
            self.send_commit_updates();
        }
    }

    fn trim_buffer(&mut self) {
        // Everything every following peer has is only needed by peers that are away;
        // they will read it back from a donor.
        let needed = self
            .peers
            .iter()
            .filter(|p| p.connected && p.following)
            .map(|p| p.flush_lsn)
            .min()
            .unwrap_or(self.commit_lsn);
        self.buffer
            .trim(needed.min(self.commit_lsn), self.commit_lsn);
    }

    /// Whether the proposer can take more WAL from Postgres now. WAL not yet on a
    /// majority cannot be dropped, so past the buffer limit the driver must stop
    /// reading from Postgres until the safekeepers catch up (backpressure).
    pub fn accepts_wal(&self) -> bool {
        self.buffer.bytes_above(self.commit_lsn) < self.settings.max_buffered_wal_bytes
    }
}

/// Recent WAL in memory, as chunks keyed by start LSN. WAL at or above the commit LSN
/// may exist nowhere else durably, so it is never evicted; committed WAL is evicted
/// beyond `max_bytes` (a majority holds it, so a laggard reads it from a donor).
struct WalBuffer {
    chunks: BTreeMap<Lsn, Bytes>,
    bytes: u64,
    max_bytes: u64,
}

impl WalBuffer {
    fn new(max_bytes: u64) -> WalBuffer {
        WalBuffer {
            chunks: BTreeMap::new(),
            bytes: 0,
            max_bytes,
        }
    }

    fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    fn insert(&mut self, start: Lsn, wal: Bytes) {
        if wal.is_empty() || self.get(start, 1).is_some() {
            return;
        }
        self.bytes += wal.len() as u64;
        self.chunks.insert(start, wal);
    }

    /// Bytes starting exactly at `lsn`, up to `max` and the end of the chunk.
    fn get(&self, lsn: Lsn, max: usize) -> Option<Bytes> {
        let (start, chunk) = self.chunks.range(..=lsn).next_back()?;
        let offset = (lsn.0 - start.0) as usize;
        if offset >= chunk.len() {
            return None;
        }
        Some(chunk.slice(offset..chunk.len().min(offset + max)))
    }

    fn next_start_after(&self, lsn: Lsn) -> Option<Lsn> {
        self.chunks.range(lsn.plus(1)..).next().map(|(l, _)| *l)
    }

    /// Drops whole chunks below `needed`, and committed chunks (below `commit`) while
    /// over the size limit.
    fn trim(&mut self, needed: Lsn, commit: Lsn) {
        while let Some((start, chunk)) = self.chunks.first_key_value() {
            let end = start.plus(chunk.len() as u64);
            let unneeded = end <= needed;
            let evictable = end <= commit && self.bytes > self.max_bytes;
            if !(unneeded || evictable) {
                break;
            }
            let len = chunk.len() as u64;
            self.chunks.pop_first();
            self.bytes -= len;
        }
    }

    /// Bytes held at or above `commit`: WAL the proposer alone may hold.
    fn bytes_above(&self, commit: Lsn) -> u64 {
        self.chunks
            .range(..)
            .map(|(start, chunk)| {
                let end = start.plus(chunk.len() as u64);
                if end <= commit {
                    0
                } else {
                    end.0 - start.0.max(commit.0)
                }
            })
            .sum()
    }
}
