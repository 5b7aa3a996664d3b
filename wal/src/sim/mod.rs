//! Deterministic simulation of the WAL quorum: the real acceptor and proposer state
//! machines ([`crate::safekeeper::Acceptor`], [`crate::proposer::Proposer`]) exchanging
//! real protocol frames over a simulated network and disks, driven by a seeded PRNG.
//!
//! Faults: message loss, duplication and reordering, link partitions, safekeeper crashes
//! at any step (unsynced writes lost, the last one possibly torn), proposer crashes and
//! competing proposers. After every step the invariants are checked:
//! - committed WAL never changes: every commit's bytes agree with all earlier commits;
//! - the committed prefix never shrinks, and each acceptor's commit LSN never goes back;
//! - every LSN a proposer reported as committed is durable, byte for byte, on a majority;
//! - a "sync safekeepers" proposer (no compute; it fixes the end of the timeline's WAL
//!   for a replacement compute) ends at or above every commit of every older term, even
//!   commits reported after it finished.
//!
//! Liveness, once faults stop: some proposer gets elected and commits new WAL; once the
//! compute stops writing, everything it wrote gets committed and every safekeeper learns
//! the commit LSN (without more WAL to carry it); and a sync proposer then finishes, at
//! or above everything committed.
//!
//! A failing seed replays exactly: `tarn simulate --seed N`.

mod rng;
mod walmodel;

use std::collections::VecDeque;

use bytes::Bytes;

use crate::proposer::{Phase, Proposer, ProposerMode, ProposerOutput, ProposerSettings};
use crate::protocol::{
    FRAME_HEADER_BYTES, ProposerMessage, Refusal, SafekeeperMessage, decode_frame_header,
    decode_proposer_message, decode_safekeeper_message, encode_proposer_message,
    encode_safekeeper_message,
};
use crate::safekeeper::{Acceptor, ControlState, Reply, StorageOp};
use crate::{Lsn, NodeId, SystemId, TimelineId};

pub use rng::SimRng;
use walmodel::{Generator, Tracker, scan_end_of_wal};

const SAFEKEEPERS: usize = 3;
const MAJORITY: usize = SAFEKEEPERS / 2 + 1;
/// Postgres's smallest segment size keeps simulated WAL small.
const SEGMENT_SIZE_BYTES: u64 = 1 << 20;
const TIMELINE_START: Lsn = Lsn(SEGMENT_SIZE_BYTES);
const SYSTEM_ID: SystemId = SystemId(0x7A4E_0001);
/// Bounds a seed's WAL so every seed runs in milliseconds.
const MAX_WAL_BYTES_PER_SEED: u64 = 256 * 1024;
const MAX_LIVE_PROPOSERS: usize = 2;
/// How many recent events a failure report shows.
const TRACE_EVENTS: usize = 60;
const TICK_MS: u64 = 10;
/// Deliveries that ignore a connection's order, per thousand, while faults are on.
const REORDER_PER_MILLE: u64 = 20;
/// Steps of fault-free running at the end, in which the cluster must make progress.
const HEAL_STEPS: u32 = 4000;
/// WAL the compute may still write once faults stop, so progress can be observed.
const HEAL_WAL_BYTES: u64 = 32 * 1024;
/// Proposers started while faults are on that are sync proposers, per thousand.
const SYNC_PROPOSERS_PER_MILLE: u64 = 250;

#[derive(Clone, Debug)]
pub struct SimOptions {
    pub seed: u64,
    pub steps: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimOutcome {
    pub seed: u64,
    pub committed_end: Lsn,
    pub commits: u64,
    pub elections: u64,
    pub safekeeper_crashes: u64,
    pub proposers_started: u64,
    pub messages_delivered: u64,
    /// Sync proposers that fixed the end of the WAL.
    pub syncs: u64,
}

#[derive(Clone, Debug)]
pub struct SimFailure {
    pub seed: u64,
    pub step: u32,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for SimFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "simulation seed {} failed at step {}: {}",
            self.seed, self.step, self.message
        )?;
        writeln!(f, "last events:")?;
        for e in &self.trace {
            writeln!(f, "  {e}")?;
        }
        write!(f, "replay with: tarn simulate --seed {}", self.seed)
    }
}

impl std::error::Error for SimFailure {}

/// A simulated disk: what survives a crash (`durable`) and what does not yet (`pending`).
#[derive(Default)]
struct Disk {
    /// Bytes from `TIMELINE_START`.
    durable: Vec<u8>,
    pending: Vec<(Lsn, Bytes)>,
}

impl Disk {
    fn apply(&mut self, lsn: Lsn, bytes: &[u8]) {
        let off = (lsn.0 - TIMELINE_START.0) as usize;
        if self.durable.len() < off + bytes.len() {
            self.durable.resize(off + bytes.len(), 0);
        }
        self.durable[off..off + bytes.len()].copy_from_slice(bytes);
    }
    fn sync(&mut self) {
        for (lsn, bytes) in std::mem::take(&mut self.pending) {
            self.apply(lsn, &bytes);
        }
    }
    fn truncate(&mut self, lsn: Lsn) {
        self.sync();
        self.durable.truncate((lsn.0 - TIMELINE_START.0) as usize);
    }
    /// Unsynced writes are lost; the first of them may land partially (a torn write).
    fn crash(&mut self, rng: &mut SimRng) {
        let pending = std::mem::take(&mut self.pending);
        let survivors = rng.below(pending.len() as u64 + 1) as usize;
        for (i, (lsn, bytes)) in pending.into_iter().enumerate() {
            if i < survivors {
                self.apply(lsn, &bytes);
            } else if i == survivors {
                let torn = rng.below(bytes.len() as u64 + 1) as usize;
                self.apply(lsn, &bytes[..torn]);
                break;
            }
        }
    }
    fn read(&self, lsn: Lsn, len: usize) -> &[u8] {
        let off = (lsn.0 - TIMELINE_START.0) as usize;
        let end = (off + len).min(self.durable.len());
        &self.durable[off.min(end)..end]
    }
}

/// Identifies one connection between a proposer and a safekeeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conn {
    proposer: usize,
    epoch: u64,
}

struct SimSafekeeper {
    up: bool,
    disk: Disk,
    control: Option<ControlState>,
    acceptor: Option<Acceptor>,
    tracker: Option<Tracker>,
    awaiting_flush: Vec<Conn>,
    commit_seen: Lsn,
}

struct SimCompute {
    generator: Generator,
    /// WAL generated since faults stopped (bounded by `HEAL_WAL_BYTES`).
    generated_after_heal: u64,
    unsent: VecDeque<u8>,
    next_lsn: Lsn,
}

struct SimProposer {
    core: Proposer,
    alive: bool,
    conns: [Option<u64>; SAFEKEEPERS],
    compute: Option<SimCompute>,
    committed: Lsn,
    /// A sync proposer's result: the end of WAL it fixed.
    synced: Option<Lsn>,
}

struct Packet {
    proposer: usize,
    safekeeper: usize,
    epoch: u64,
    to_safekeeper: bool,
    frame: Bytes,
}

struct Sim {
    rng: SimRng,
    now_ms: u64,
    step: u32,
    safekeepers: Vec<SimSafekeeper>,
    proposers: Vec<SimProposer>,
    network: Vec<Packet>,
    partitioned: [[bool; SAFEKEEPERS]; 8],
    next_epoch: u64,
    /// The committed WAL, from `TIMELINE_START`.
    committed: Vec<u8>,
    wal_generated: u64,
    trace: VecDeque<String>,
    outcome: SimOutcome,
    faults: bool,
    /// Computes write no new WAL (they still send what they wrote).
    wal_stopped: bool,
}

type SimResult<T> = Result<T, String>;

impl Sim {
    fn new(seed: u64) -> Sim {
        Sim {
            rng: SimRng::new(seed),
            now_ms: 0,
            step: 0,
            safekeepers: (0..SAFEKEEPERS)
                .map(|_| SimSafekeeper {
                    up: true,
                    disk: Disk::default(),
                    control: None,
                    acceptor: None,
                    tracker: None,
                    awaiting_flush: Vec::new(),
                    commit_seen: Lsn::INVALID,
                })
                .collect(),
            proposers: Vec::new(),
            network: Vec::new(),
            partitioned: [[false; SAFEKEEPERS]; 8],
            next_epoch: 1,
            committed: Vec::new(),
            wal_generated: 0,
            trace: VecDeque::new(),
            outcome: SimOutcome {
                seed,
                ..SimOutcome::default()
            },
            faults: true,
            wal_stopped: false,
        }
    }

    fn log(&mut self, event: String) {
        if self.trace.len()
            == std::env::var("TARN_SIM_TRACE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(TRACE_EVENTS)
        {
            self.trace.pop_front();
        }
        self.trace
            .push_back(format!("[{} t={}ms] {event}", self.step, self.now_ms));
    }

    fn settings(&self, mode: ProposerMode) -> ProposerSettings {
        ProposerSettings {
            system_id: SYSTEM_ID,
            timeline_id: TimelineId(1),
            pg_version: 150018,
            segment_size_bytes: SEGMENT_SIZE_BYTES,
            initial_timeline_start: TIMELINE_START,
            safekeeper_count: SAFEKEEPERS,
            max_in_flight_bytes: 32 * 1024,
            max_buffered_wal_bytes: 64 * 1024,
            progress_timeout_ms: 300,
            election_timeout_ms: 2000,
            mode,
        }
    }

    fn live_proposers(&self) -> usize {
        self.proposers.iter().filter(|p| p.alive).count()
    }

    fn start_proposer(&mut self, mode: ProposerMode) -> SimResult<()> {
        let core = Proposer::new(self.settings(mode), self.now_ms);
        self.proposers.push(SimProposer {
            core,
            alive: true,
            conns: [None; SAFEKEEPERS],
            compute: None,
            committed: Lsn::INVALID,
            synced: None,
        });
        self.outcome.proposers_started += 1;
        let p = self.proposers.len() - 1;
        self.log(format!("proposer {p} starts ({mode:?})"));
        Ok(())
    }

    /// Highest commit any proposer of a term below `term` reported.
    fn committed_below_term(&self, term: crate::Term) -> Lsn {
        self.proposers
            .iter()
            .filter(|p| p.core.term() < term)
            .map(|p| p.committed)
            .max()
            .unwrap_or(Lsn::INVALID)
    }

    /// A sync proposer that has fixed the end of WAL reports it and exits, as `tarn
    /// proposer --sync-safekeepers` does. Every WAL byte acknowledged by an older term
    /// must lie below that end, or a replacement compute would lose it.
    fn check_synced(&mut self, p: usize) -> SimResult<()> {
        let prop = &self.proposers[p];
        if !prop.alive || prop.synced.is_some() || prop.core.mode() != ProposerMode::Sync {
            return Ok(());
        }
        let Some(end) = prop.core.synced_lsn() else {
            return Ok(());
        };
        let term = prop.core.term();
        let committed = self.committed_below_term(term);
        if end < committed {
            return Err(format!(
                "sync proposer p{p} (term {term}) fixed the end of WAL at {end}, below {committed} committed by an older term"
            ));
        }
        self.proposers[p].synced = Some(end);
        self.proposers[p].alive = false;
        self.outcome.syncs += 1;
        self.log(format!(
            "p{p} synced: end of WAL {end} (term {term}); exits"
        ));
        Ok(())
    }

    fn link_ok(&self, p: usize, s: usize) -> bool {
        !self.partitioned[p % 8][s]
    }

    // ---- safekeeper side ----

    fn deliver_to_safekeeper(&mut self, conn: Conn, s: usize, frame: Bytes) -> SimResult<()> {
        let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES]
            .try_into()
            .map_err(|_| "short frame".to_string())?;
        let h = decode_frame_header(&header).map_err(|e| e.to_string())?;
        let msg = decode_proposer_message(h.kind, frame.slice(FRAME_HEADER_BYTES..))
            .map_err(|e| e.to_string())?;
        self.log(format!(
            "sk{s} <- p{} {}",
            conn.proposer,
            describe_proposer_message(&msg)
        ));
        let sk = &mut self.safekeepers[s];
        if let ProposerMessage::Hello(hello) = &msg
            && sk.acceptor.is_none()
        {
            let a = Acceptor::create(NodeId(s as u64), hello);
            sk.control = Some(a.control().clone());
            sk.acceptor = Some(a);
        }
        let Some(acceptor) = sk.acceptor.as_mut() else {
            let term = sk.control.as_ref().map(|c| c.term).unwrap_or_default();
            return self.reply(
                conn,
                s,
                SafekeeperMessage::Refused(Refusal {
                    term,
                    reason: "unknown timeline".into(),
                }),
            );
        };
        let step = match &msg {
            ProposerMessage::Hello(h) => acceptor.handle_hello(h),
            ProposerMessage::VoteRequest(v) => acceptor.handle_vote_request(v),
            ProposerMessage::Elected(e) => acceptor.handle_elected(e),
            ProposerMessage::Append(a) => acceptor.handle_append(a),
            ProposerMessage::ReadWal(r) => {
                let reply = match acceptor.check_read(r, crate::protocol::MAX_APPEND_WAL_BYTES) {
                    Ok((start, len)) => SafekeeperMessage::WalChunk(crate::protocol::WalChunk {
                        start_lsn: start,
                        wal: Bytes::copy_from_slice(sk.disk.read(start, len)),
                    }),
                    Err(refusal) => SafekeeperMessage::Refused(refusal),
                };
                return self.reply(conn, s, reply);
            }
            ProposerMessage::Status => {
                let status = acceptor.status();
                return self.reply(
                    conn,
                    s,
                    SafekeeperMessage::Status(crate::protocol::StatusReply {
                        node_id: NodeId(s as u64),
                        timelines: vec![status],
                    }),
                );
            }
        };
        for op in step.ops {
            match op {
                StorageOp::PersistControl(c) => sk.control = Some(c),
                StorageOp::TruncateWal(lsn) => {
                    sk.disk.truncate(lsn);
                    let prev = if lsn == TIMELINE_START {
                        None
                    } else {
                        scan_end_of_wal(
                            &sk.disk.durable,
                            TIMELINE_START,
                            TIMELINE_START,
                            SEGMENT_SIZE_BYTES,
                        )
                        .1
                    };
                    sk.tracker = Some(Tracker::new(lsn, prev, SEGMENT_SIZE_BYTES));
                }
                StorageOp::WriteWal { lsn, wal } => {
                    let tracker = sk
                        .tracker
                        .as_mut()
                        .ok_or("write before the WAL start is known")?;
                    let gap = crate::safekeeper::padding_gap(tracker.position(), lsn)
                        .map_err(|e| format!("sk{s}: {e}"))?;
                    if gap > 0 {
                        let zeros = Bytes::from(vec![0u8; gap]);
                        tracker
                            .feed(&zeros)
                            .map_err(|e| format!("sk{s} padding at {}: {e}", tracker.position()))?;
                        sk.disk.pending.push((Lsn(lsn.0 - gap as u64), zeros));
                    }
                    tracker
                        .feed(&wal)
                        .map_err(|e| format!("sk{s} got invalid WAL at {lsn}: {e}"))?;
                    sk.disk.pending.push((lsn, wal));
                }
            }
        }
        let commit = acceptor.control().commit_lsn;
        if commit < sk.commit_seen {
            return Err(format!(
                "sk{s} commit LSN went back from {} to {commit}",
                sk.commit_seen
            ));
        }
        sk.commit_seen = commit;
        match step.reply {
            Reply::Now(m) => self.reply(conn, s, m),
            Reply::AfterFlush => {
                if !sk.awaiting_flush.contains(&conn) {
                    sk.awaiting_flush.push(conn);
                }
                Ok(())
            }
        }
    }

    fn reply(&mut self, conn: Conn, s: usize, msg: SafekeeperMessage) -> SimResult<()> {
        self.network.push(Packet {
            proposer: conn.proposer,
            safekeeper: s,
            epoch: conn.epoch,
            to_safekeeper: false,
            frame: encode_safekeeper_message(&msg),
        });
        Ok(())
    }

    fn sync_safekeeper(&mut self, s: usize) -> SimResult<()> {
        let sk = &mut self.safekeepers[s];
        if !sk.up {
            return Ok(());
        }
        sk.disk.sync();
        let (Some(acceptor), Some(tracker)) = (sk.acceptor.as_mut(), sk.tracker.as_ref()) else {
            return Ok(());
        };
        let record_end = tracker.complete_end();
        // Segments are zero-filled on disk, so a record's trailing padding is there
        // even when the chunk that ended the record stopped inside it.
        let padded = (record_end.0 - TIMELINE_START.0) as usize;
        if sk.disk.durable.len() < padded {
            sk.disk.durable.resize(padded, 0);
        }
        let waiting = std::mem::take(&mut sk.awaiting_flush);
        let before = acceptor.flush_lsn();
        let msg = acceptor.on_flushed(record_end);
        // Checkpoint the control file now and then, as the server does.
        if let Some(c) = acceptor.control_to_checkpoint() {
            sk.control = Some(c.clone());
            acceptor.control_persisted(&c);
        }
        if record_end != before || !waiting.is_empty() {
            self.log(format!("sk{s} syncs: flush {record_end}"));
        }
        for conn in waiting {
            self.reply(conn, s, msg.clone())?;
        }
        Ok(())
    }

    fn crash_safekeeper(&mut self, s: usize) {
        let sk = &mut self.safekeepers[s];
        sk.up = false;
        sk.acceptor = None;
        sk.tracker = None;
        sk.awaiting_flush.clear();
        sk.disk.crash(&mut self.rng);
        self.outcome.safekeeper_crashes += 1;
        for p in 0..self.proposers.len() {
            if self.proposers[p].conns[s].take().is_some() && self.proposers[p].alive {
                self.proposers[p].core.on_disconnected(s);
            }
        }
        self.log(format!("sk{s} crashes"));
    }

    fn restart_safekeeper(&mut self, s: usize) -> SimResult<()> {
        let sk = &mut self.safekeepers[s];
        sk.up = true;
        sk.commit_seen = Lsn::INVALID;
        let Some(control) = sk.control.clone() else {
            self.log(format!("sk{s} restarts empty"));
            return Ok(());
        };
        if control.timeline_start_lsn == Lsn::INVALID {
            sk.acceptor = Some(Acceptor::recover(NodeId(s as u64), control, Lsn::INVALID));
            self.log(format!("sk{s} restarts with no WAL"));
            return Ok(());
        }
        let hint = if control.flush_lsn_hint == Lsn::INVALID {
            control.timeline_start_lsn
        } else {
            control.flush_lsn_hint
        };
        let (end, prev) =
            scan_end_of_wal(&sk.disk.durable, TIMELINE_START, hint, SEGMENT_SIZE_BYTES);
        if end < hint {
            return Err(format!(
                "sk{s} recovery found end of WAL {end} below its durable hint {hint}"
            ));
        }
        sk.disk.truncate(end);
        // As on a real zero-filled segment, padding after the last record reads as
        // zeros even if the torn write stopped inside it.
        let padded = (end.0 - TIMELINE_START.0) as usize;
        if sk.disk.durable.len() < padded {
            sk.disk.durable.resize(padded, 0);
        }
        sk.tracker = Some(Tracker::new(end, prev, SEGMENT_SIZE_BYTES));
        sk.acceptor = Some(Acceptor::recover(NodeId(s as u64), control, end));
        self.log(format!("sk{s} restarts: end of WAL {end}"));
        Ok(())
    }

    // ---- proposer side ----

    fn deliver_to_proposer(&mut self, p: usize, s: usize, frame: Bytes) -> SimResult<()> {
        let header: [u8; FRAME_HEADER_BYTES] = frame[..FRAME_HEADER_BYTES]
            .try_into()
            .map_err(|_| "short frame".to_string())?;
        let h = decode_frame_header(&header).map_err(|e| e.to_string())?;
        let msg = decode_safekeeper_message(h.kind, frame.slice(FRAME_HEADER_BYTES..))
            .map_err(|e| e.to_string())?;
        self.log(format!(
            "p{p} <- sk{s} {}",
            describe_safekeeper_message(&msg)
        ));
        self.proposers[p].core.on_message(s, msg);
        self.process_outputs(p)
    }

    fn process_outputs(&mut self, p: usize) -> SimResult<()> {
        loop {
            let outputs = self.proposers[p].core.drain_outputs();
            if outputs.is_empty() {
                return self.check_synced(p);
            }
            for out in outputs {
                match out {
                    ProposerOutput::Send { to, msg } => {
                        if let Some(epoch) = self.proposers[p].conns[to] {
                            self.network.push(Packet {
                                proposer: p,
                                safekeeper: to,
                                epoch,
                                to_safekeeper: true,
                                frame: encode_proposer_message(&msg),
                            });
                        }
                    }
                    ProposerOutput::Reconnect { peer, reason } => {
                        self.log(format!("p{p} drops connection to sk{peer}: {reason}"));
                        self.proposers[p].conns[peer] = None;
                    }
                    ProposerOutput::StartStreaming { from } => self.start_compute(p, from)?,
                    ProposerOutput::Committed { commit_lsn } => self.on_committed(p, commit_lsn)?,
                    ProposerOutput::Stopped { reason } => {
                        self.log(format!("p{p} stops: {reason}"));
                        self.proposers[p].alive = false;
                    }
                    ProposerOutput::TimelineEmpty => {
                        if !self.committed.is_empty() {
                            return Err(format!(
                                "sync proposer p{p} found no WAL, but WAL up to {} is committed",
                                self.outcome.committed_end
                            ));
                        }
                        self.log(format!("p{p} stops: the timeline holds no WAL"));
                        self.proposers[p].alive = false;
                    }
                }
            }
        }
    }

    fn start_compute(&mut self, p: usize, from: Lsn) -> SimResult<()> {
        self.outcome.elections += 1;
        let term = self.proposers[p].core.term();
        if self.proposers[p].core.mode() == ProposerMode::Sync {
            self.log(format!(
                "p{p} (sync) elected in term {term}, end of WAL {from}"
            ));
            return Ok(());
        }
        // The new term continues the donor's WAL: find the record that ends at `from`
        // there, so the new WAL's xl_prev chain links up as Postgres's would.
        let prev = if from == TIMELINE_START {
            None
        } else {
            let donor = self.proposers[p]
                .core
                .donor()
                .ok_or("elected without a donor")?;
            let disk = &self.safekeepers[donor].disk;
            let upto = ((from.0 - TIMELINE_START.0) as usize).min(disk.durable.len());
            let (end, prev) = scan_end_of_wal(
                &disk.durable[..upto],
                TIMELINE_START,
                TIMELINE_START,
                SEGMENT_SIZE_BYTES,
            );
            if end != from {
                // The donor lost that WAL since it voted (a newer term truncated it);
                // this proposer cannot win anything, so its compute can write junk.
                self.log(format!(
                    "p{p}: donor sk{donor} no longer ends at {from} (ends at {end})"
                ));
            }
            prev
        };
        self.log(format!("p{p} elected in term {term}, streams from {from}"));
        self.proposers[p].compute = Some(SimCompute {
            generator: Generator::new(from, prev, SEGMENT_SIZE_BYTES, self.rng.next_u64()),
            unsent: VecDeque::new(),
            next_lsn: from,
            generated_after_heal: 0,
        });
        Ok(())
    }

    fn on_committed(&mut self, p: usize, commit: Lsn) -> SimResult<()> {
        let prop = &mut self.proposers[p];
        if commit < prop.committed {
            return Err(format!(
                "p{p} commit LSN went back from {} to {commit}",
                prop.committed
            ));
        }
        prop.committed = commit;
        self.outcome.commits += 1;
        let term = prop.core.term();
        for (q, other) in self.proposers.iter().enumerate() {
            if let Some(end) = other.synced
                && other.core.term() > term
                && commit > end
            {
                return Err(format!(
                    "p{p} (term {term}) committed {commit}, beyond the end of WAL {end} that sync proposer p{q} (term {}) fixed",
                    other.core.term()
                ));
            }
        }
        let len = (commit.0 - TIMELINE_START.0) as usize;
        // The committed bytes are those a majority holds durably.
        let mut agreed: Option<Vec<u8>> = None;
        for a in 0..SAFEKEEPERS {
            let da = &self.safekeepers[a].disk.durable;
            if da.len() < len {
                continue;
            }
            let holders = (0..SAFEKEEPERS)
                .filter(|&b| {
                    let db = &self.safekeepers[b].disk.durable;
                    db.len() >= len && db[..len] == da[..len]
                })
                .count();
            if holders >= MAJORITY {
                agreed = Some(da[..len].to_vec());
                break;
            }
        }
        let Some(bytes) = agreed else {
            return Err(format!(
                "p{p} (term {}) reported {commit} committed, but no majority holds the same WAL up to it durably",
                self.proposers[p].core.term()
            ));
        };
        let overlap = bytes.len().min(self.committed.len());
        if bytes[..overlap] != self.committed[..overlap] {
            let at = (0..overlap)
                .find(|&i| bytes[i] != self.committed[i])
                .unwrap_or(0);
            return Err(format!(
                "two different WAL bytes committed at {}: p{p} (term {}) committed {commit}",
                TIMELINE_START.plus(at as u64),
                self.proposers[p].core.term()
            ));
        }
        if bytes.len() > self.committed.len() {
            self.committed = bytes;
        }
        self.outcome.committed_end = TIMELINE_START.plus(self.committed.len() as u64);
        self.log(format!("p{p} commits {commit}"));
        Ok(())
    }

    fn produce_wal(&mut self, p: usize) -> SimResult<()> {
        let faults = self.faults;
        let global_budget_left = self.wal_generated < MAX_WAL_BYTES_PER_SEED;
        let record_len = self.rng.range(1, 3000) as usize;
        let chunk = self.rng.range(1, 20_000) as usize;
        let prop = &mut self.proposers[p];
        if !prop.core.accepts_wal() {
            return Ok(());
        }
        let Some(compute) = prop.compute.as_mut() else {
            return Ok(());
        };
        let budget_left = if self.wal_stopped {
            false
        } else if faults {
            global_budget_left
        } else {
            compute.generated_after_heal < HEAL_WAL_BYTES
        };
        if budget_left {
            let bytes = compute.generator.append_record(record_len);
            self.wal_generated += bytes.len() as u64;
            compute.generated_after_heal += bytes.len() as u64;
            compute.unsent.extend(bytes.iter());
        }
        // Postgres sends what it has flushed, cut anywhere (even mid-record).
        let n = chunk.min(compute.unsent.len());
        if n == 0 {
            return Ok(());
        }
        let data: Vec<u8> = compute.unsent.drain(..n).collect();
        let start = compute.next_lsn;
        compute.next_lsn = start.plus(n as u64);
        prop.core
            .on_wal(start, Bytes::from(data))
            .map_err(|e| format!("p{p}: {e}"))?;
        self.process_outputs(p)
    }

    // ---- invariants ----

    fn check_invariants(&self) -> SimResult<()> {
        let len = self.committed.len();
        if len == 0 {
            return Ok(());
        }
        let holders = self
            .safekeepers
            .iter()
            .filter(|sk| {
                sk.disk.durable.len() >= len && sk.disk.durable[..len] == self.committed[..]
            })
            .count();
        if holders < MAJORITY {
            return Err(format!(
                "committed WAL up to {} is durable on only {holders} safekeepers",
                TIMELINE_START.plus(len as u64)
            ));
        }
        Ok(())
    }

    // ---- the event loop ----

    fn step_once(&mut self) -> SimResult<()> {
        self.step += 1;
        let roll = self.rng.below(1000);
        match roll {
            0..=399 => self.deliver_one()?,
            400..=549 => {
                let live: Vec<usize> = (0..self.proposers.len())
                    .filter(|&p| {
                        self.proposers[p].alive && *self.proposers[p].core.phase() == Phase::Elected
                    })
                    .collect();
                if !live.is_empty() {
                    let p = live[self.rng.below(live.len() as u64) as usize];
                    self.produce_wal(p)?;
                }
            }
            550..=699 => {
                let s = self.rng.below(SAFEKEEPERS as u64) as usize;
                self.sync_safekeeper(s)?;
            }
            700..=799 => {
                self.now_ms += TICK_MS;
                for p in 0..self.proposers.len() {
                    if self.proposers[p].alive {
                        self.proposers[p].core.on_tick(self.now_ms);
                        self.process_outputs(p)?;
                    }
                }
            }
            800..=899 => self.connect_one()?,
            900..=919 if self.faults => {
                if !self.network.is_empty() {
                    let i = self.rng.below(self.network.len() as u64) as usize;
                    self.network.remove(i);
                    self.log("a message is lost".into());
                }
            }
            920..=939 if self.faults => {
                if !self.network.is_empty() {
                    let i = self.rng.below(self.network.len() as u64) as usize;
                    let dup = Packet {
                        frame: self.network[i].frame.clone(),
                        ..self.network[i]
                    };
                    self.network.push(dup);
                    self.log("a message is duplicated".into());
                }
            }
            940..=943 if self.faults => {
                let s = self.rng.below(SAFEKEEPERS as u64) as usize;
                if self.safekeepers[s].up {
                    self.crash_safekeeper(s);
                }
            }
            950..=979 => {
                let s = self.rng.below(SAFEKEEPERS as u64) as usize;
                if !self.safekeepers[s].up {
                    self.restart_safekeeper(s)?;
                }
            }
            980..=982 if self.faults => {
                let p = self.rng.below(8) as usize;
                let s = self.rng.below(SAFEKEEPERS as u64) as usize;
                self.partitioned[p][s] = !self.partitioned[p][s];
                self.log(format!(
                    "link p*{p}/sk{s} {}",
                    if self.partitioned[p][s] {
                        "cut"
                    } else {
                        "healed"
                    }
                ));
            }
            985..=986 if self.faults => {
                let live: Vec<usize> = (0..self.proposers.len())
                    .filter(|&p| self.proposers[p].alive)
                    .collect();
                if !live.is_empty() {
                    let p = live[self.rng.below(live.len() as u64) as usize];
                    self.proposers[p].alive = false;
                    self.log(format!("p{p} crashes"));
                }
            }
            _ => {
                let live = self.live_proposers();
                if live == 0 || (self.faults && live < MAX_LIVE_PROPOSERS && self.rng.chance(20)) {
                    // While faults are on, some are sync proposers (a compute's
                    // replacement being prepared); once they stop, only computes' own.
                    let mode = if self.faults && self.rng.chance(SYNC_PROPOSERS_PER_MILLE) {
                        ProposerMode::Sync
                    } else {
                        ProposerMode::Stream
                    };
                    self.start_proposer(mode)?;
                }
            }
        }
        self.check_invariants()
    }

    fn deliver_one(&mut self) -> SimResult<()> {
        if self.network.is_empty() {
            return Ok(());
        }
        // Packets of different connections interleave arbitrarily; within one
        // connection they arrive in order, as over TCP, except that a fault may deliver
        // any packet early (reordering the protocol must survive, safely).
        let i = self.rng.below(self.network.len() as u64) as usize;
        let i = if self.faults && self.rng.chance(REORDER_PER_MILLE) {
            i
        } else {
            let k = &self.network[i];
            let key = (k.proposer, k.safekeeper, k.epoch, k.to_safekeeper);
            self.network
                .iter()
                .position(|q| (q.proposer, q.safekeeper, q.epoch, q.to_safekeeper) == key)
                .unwrap_or(i)
        };
        let pkt = self.network.remove(i);
        let (p, s) = (pkt.proposer, pkt.safekeeper);
        let conn_live = self.proposers[p].alive
            && self.proposers[p].conns[s] == Some(pkt.epoch)
            && self.safekeepers[s].up
            && self.link_ok(p, s);
        if !conn_live {
            return Ok(());
        }
        self.outcome.messages_delivered += 1;
        let conn = Conn {
            proposer: p,
            epoch: pkt.epoch,
        };
        if pkt.to_safekeeper {
            self.deliver_to_safekeeper(conn, s, pkt.frame)
        } else {
            self.deliver_to_proposer(p, s, pkt.frame)
        }
    }

    fn connect_one(&mut self) -> SimResult<()> {
        let mut candidates = Vec::new();
        for p in 0..self.proposers.len() {
            for s in 0..SAFEKEEPERS {
                let pr = &self.proposers[p];
                if pr.alive && pr.conns[s].is_none() && self.safekeepers[s].up && self.link_ok(p, s)
                {
                    candidates.push((p, s));
                }
            }
        }
        if candidates.is_empty() {
            return Ok(());
        }
        let (p, s) = candidates[self.rng.below(candidates.len() as u64) as usize];
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        self.proposers[p].conns[s] = Some(epoch);
        self.log(format!("p{p} connects to sk{s}"));
        self.proposers[p].core.on_connected(s);
        self.process_outputs(p)
    }

    fn heal(&mut self) -> SimResult<()> {
        self.faults = false;
        // Progress is shown by new WAL getting committed, so every compute may write a
        // little more, whatever was used before.
        for p in &mut self.proposers {
            if let Some(c) = p.compute.as_mut() {
                c.generated_after_heal = 0;
            }
        }
        self.partitioned = [[false; SAFEKEEPERS]; 8];
        for s in 0..SAFEKEEPERS {
            if !self.safekeepers[s].up {
                self.restart_safekeeper(s)?;
            }
        }
        self.log("faults stop; every safekeeper is up".into());
        Ok(())
    }
}

/// Runs one seed.
pub fn run(options: &SimOptions) -> Result<SimOutcome, SimFailure> {
    let mut sim = Sim::new(options.seed);
    let result = (|| -> SimResult<()> {
        sim.start_proposer(ProposerMode::Stream)?;
        for _ in 0..options.steps {
            sim.step_once()?;
        }
        sim.heal()?;
        sim.await_progress()?;
        sim.await_commit_known()?;
        sim.await_sync()
    })();
    match result {
        Ok(()) => Ok(sim.outcome),
        Err(message) => Err(SimFailure {
            seed: options.seed,
            step: sim.step,
            message,
            trace: sim.trace.into_iter().collect(),
        }),
    }
}

impl Sim {
    /// Liveness: with faults gone, some proposer must get elected and commit new WAL.
    fn await_progress(&mut self) -> SimResult<()> {
        let committed_before = self.committed.len();
        for _ in 0..HEAL_STEPS {
            self.step_once()?;
            let elected = self.proposers.iter().any(|p| {
                p.alive && p.committed >= p.core.term_start_lsn() && p.committed != Lsn::INVALID
            });
            if elected && self.committed.len() > committed_before {
                return Ok(());
            }
        }
        Err(format!(
            "no progress in {HEAL_STEPS} fault-free steps after healing"
        ))
    }

    /// Liveness once the compute stops writing: all it wrote gets committed, and every
    /// safekeeper learns that commit LSN although no more WAL comes to carry it.
    fn await_commit_known(&mut self) -> SimResult<()> {
        self.wal_stopped = true;
        self.log("computes stop writing WAL".into());
        for _ in 0..HEAL_STEPS {
            self.step_once()?;
            if self.commit_known_everywhere().is_some() {
                return Ok(());
            }
        }
        let commits: Vec<String> = self
            .safekeepers
            .iter()
            .map(|sk| {
                sk.acceptor
                    .as_ref()
                    .map_or("down".to_string(), |a| a.control().commit_lsn.to_string())
            })
            .collect();
        let proposers: Vec<String> = self
            .proposers
            .iter()
            .enumerate()
            .filter(|(_, p)| p.alive)
            .map(|(i, p)| {
                format!(
                    "p{i} {:?} term {} commit {} wal end {}",
                    p.core.phase(),
                    p.core.term(),
                    p.core.commit_lsn(),
                    p.core.wal_end()
                )
            })
            .collect();
        Err(format!(
            "safekeepers did not learn the commit LSN in {HEAL_STEPS} steps once WAL stopped: safekeeper commit LSNs {commits:?}; live proposers {proposers:?}"
        ))
    }

    /// The commit LSN of an elected proposer whose compute's WAL is all committed and
    /// that every safekeeper knows, if there is one.
    fn commit_known_everywhere(&self) -> Option<Lsn> {
        self.proposers.iter().find_map(|p| {
            let drained = p.compute.as_ref().is_some_and(|c| c.unsent.is_empty());
            let commit = p.core.commit_lsn();
            let settled = p.alive
                && *p.core.phase() == Phase::Elected
                && drained
                && commit != Lsn::INVALID
                && commit == p.core.wal_end();
            let known = self.safekeepers.iter().all(|sk| {
                sk.up
                    && sk
                        .acceptor
                        .as_ref()
                        .is_some_and(|a| a.control().commit_lsn >= commit)
            });
            (settled && known).then_some(commit)
        })
    }

    /// Liveness and safety of sync-safekeepers after a compute died: with every other
    /// proposer gone, a sync proposer finishes, at or above everything committed.
    fn await_sync(&mut self) -> SimResult<()> {
        for p in &mut self.proposers {
            p.alive = false;
        }
        self.log("every proposer dies; a sync proposer starts".into());
        self.start_proposer(ProposerMode::Sync)?;
        let p = self.proposers.len() - 1;
        for _ in 0..HEAL_STEPS {
            self.step_once()?;
            if let Some(end) = self.proposers[p].synced {
                let committed = TIMELINE_START.plus(self.committed.len() as u64);
                if end < committed {
                    return Err(format!(
                        "the final sync fixed the end of WAL at {end}, below the committed {committed}"
                    ));
                }
                return Ok(());
            }
        }
        Err(format!(
            "the sync proposer did not finish in {HEAL_STEPS} fault-free steps (phase {:?})",
            self.proposers[p].core.phase()
        ))
    }
}

fn describe_proposer_message(m: &ProposerMessage) -> String {
    match m {
        ProposerMessage::Hello(_) => "Hello".into(),
        ProposerMessage::VoteRequest(v) => format!("VoteRequest(term {})", v.term),
        ProposerMessage::Elected(e) => format!("Elected(term {}, {:?})", e.term, e.term_history.0),
        ProposerMessage::Append(a) => format!(
            "Append(term {}, {}..{}, commit {})",
            a.term,
            a.begin_lsn,
            a.end_lsn(),
            a.commit_lsn
        ),
        ProposerMessage::ReadWal(r) => format!("ReadWal({}..{})", r.start_lsn, r.end_lsn),
        ProposerMessage::Status => "Status".into(),
    }
}

fn describe_safekeeper_message(m: &SafekeeperMessage) -> String {
    match m {
        SafekeeperMessage::HelloReply(h) => {
            format!("HelloReply(term {}, flush {})", h.term, h.flush_lsn)
        }
        SafekeeperMessage::Vote(v) => format!(
            "Vote(term {}, given {}, flush {}, {:?})",
            v.term, v.vote_given, v.flush_lsn, v.term_history.0
        ),
        SafekeeperMessage::ElectedAck(a) => {
            format!("ElectedAck(term {}, flush {})", a.term, a.flush_lsn)
        }
        SafekeeperMessage::AppendResponse(a) => {
            format!("AppendResponse(term {}, flush {})", a.term, a.flush_lsn)
        }
        SafekeeperMessage::WalChunk(c) => {
            format!("WalChunk({}, {} bytes)", c.start_lsn, c.wal.len())
        }
        SafekeeperMessage::Status(_) => "Status".into(),
        SafekeeperMessage::Refused(r) => format!("Refused(term {}: {})", r.term, r.reason),
    }
}
