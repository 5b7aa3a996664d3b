//! "Sync safekeepers" (Neon's `walproposer --sync-safekeepers`): fixes the end of a
//! timeline's WAL after its compute died, without Postgres.
//!
//! tarn's computes run with fsync=off, so a crashed compute is replaced by a fresh one
//! booted from a basebackup at the end of the timeline's WAL, and that end must hold
//! every transaction ever acknowledged. Acknowledged WAL is on a majority, but the
//! safekeepers learn commit LSNs lazily and the pageserver reads only what they report
//! committed. So this runs the proposer core in [`ProposerMode::Sync`]: it wins a new
//! term (fencing the old proposer), takes the donor's WAL as the log, commits it in its
//! term and waits until a majority of safekeepers know it is committed. The returned LSN
//! E is where the replacement compute's first record goes: the next proposer, elected
//! in yet another term, finds E as its donor's flush LSN.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use crate::protocol::SafekeeperMessage;
use crate::{Lsn, SystemId, TimelineId};

use super::core::{PeerIndex, Phase, Proposer, ProposerMode, ProposerOutput, ProposerSettings};
use super::service::{Event, Link, ProposerError, TICK, close_link, send_to_link, spawn_links};

/// PG_VERSION_NUM announced by a sync proposer: tarn serves PostgreSQL 15 only,
/// safekeepers compare major versions only, and there is no Postgres to ask for its
/// minor version.
pub const SYNC_PG_VERSION_NUM: u32 = 150_000;
/// How long `tarn proposer --sync-safekeepers` tries by default.
pub const DEFAULT_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Once a majority knows the commit, how long the other connected safekeepers get to
/// learn it too (so the pageserver can read up to it from any of them). Bounded: the
/// majority already makes the result correct.
const SYNC_GRACE: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// `host:port` of each safekeeper of the timeline.
    pub safekeepers: Vec<String>,
    pub timeline_id: TimelineId,
    /// The database system the timeline's WAL belongs to.
    pub system_id: SystemId,
    /// The timeline's WAL segment size (Postgres's `wal_segment_size`).
    pub segment_size_bytes: u64,
    /// Bound on the whole run.
    pub timeout: Duration,
}

/// Fixes the end of the timeline's WAL and returns it: every WAL byte ever acknowledged
/// lies below it, it is committed in a term above every earlier one, and a majority of
/// safekeepers hold it and report it committed. [`ProposerError::EmptyTimeline`] if no
/// safekeeper of a majority holds any WAL of the timeline (then nothing was ever
/// committed on it, and a compute starts at the timeline's branch point).
pub fn sync_safekeepers(config: SyncConfig) -> Result<Lsn, ProposerError> {
    if config.safekeepers.is_empty() {
        return Err(ProposerError::NoSafekeepers);
    }
    let timeout_ms = u64::try_from(config.timeout.as_millis()).unwrap_or(u64::MAX);
    let settings = ProposerSettings {
        system_id: config.system_id,
        timeline_id: config.timeline_id,
        pg_version: SYNC_PG_VERSION_NUM,
        segment_size_bytes: config.segment_size_bytes,
        // Never used: a sync proposer does not start timelines.
        initial_timeline_start: Lsn::INVALID,
        safekeeper_count: config.safekeepers.len(),
        max_in_flight_bytes: 16 << 20,
        // Nothing is buffered: laggards are caught up from the donor's disk.
        max_buffered_wal_bytes: 16 << 20,
        progress_timeout_ms: 10_000.min(timeout_ms),
        // The run's own deadline decides; its error says more than the core's would.
        election_timeout_ms: timeout_ms.saturating_add(1000),
        mode: ProposerMode::Sync,
    };
    tracing::info!(
        timeline = %config.timeline_id,
        "sync-safekeepers: campaigning among {} safekeepers",
        config.safekeepers.len()
    );
    let started = Instant::now();
    let mut core = Proposer::new(settings, 0);
    let (events_tx, events) = mpsc::channel::<Event>();
    let stop = Arc::new(AtomicBool::new(false));
    spawn_links(&config.safekeepers, &events_tx, &stop)?;
    drop(events_tx);
    let n = config.safekeepers.len();
    let mut sync = SyncLoop {
        links: (0..n).map(|_| None).collect(),
        problems: vec![None; n],
        synced: None,
        started,
        config,
    };
    let result = sync.run(&mut core, &events);
    // The link threads write what is queued, close their connections and end.
    stop.store(true, Ordering::Release);
    sync.links.clear();
    if let Ok(end) = &result {
        tracing::info!(term = core.term().0, "sync-safekeepers: end of WAL {end}");
    }
    result
}

struct SyncLoop {
    config: SyncConfig,
    links: Vec<Option<Link>>,
    /// The last thing that went wrong with each safekeeper, for the timeout error.
    problems: Vec<Option<String>>,
    /// The end of WAL and when a majority first knew it committed.
    synced: Option<(Lsn, Instant)>,
    started: Instant,
}

impl SyncLoop {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn run(&mut self, core: &mut Proposer, events: &Receiver<Event>) -> Result<Lsn, ProposerError> {
        let deadline = self.started + self.config.timeout;
        loop {
            if let Some(end) = self.finished(core) {
                return Ok(end);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(self.timeout_error(core));
            }
            match events.recv_timeout(TICK.min(deadline - now)) {
                Ok(event) => self.handle(core, event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ProposerError::Stopped(
                        "all connection threads ended".into(),
                    ));
                }
            }
            core.on_tick(self.now_ms());
            if let Some(end) = self.apply_outputs(core)? {
                return Ok(end);
            }
        }
    }

    /// The end of WAL once a majority knows it committed and either every connected
    /// safekeeper does too or the grace period is over.
    fn finished(&mut self, core: &Proposer) -> Option<Lsn> {
        if self.synced.is_none()
            && let Some(end) = core.synced_lsn()
        {
            tracing::info!(
                "sync-safekeepers: a majority knows {end} is committed (term {})",
                core.term()
            );
            self.synced = Some((end, Instant::now()));
        }
        let (end, since) = self.synced?;
        let everyone = core.peers_knowing_commit(end) >= core.connected_peers();
        (everyone || since.elapsed() >= SYNC_GRACE).then_some(end)
    }

    fn handle(&mut self, core: &mut Proposer, event: Event) {
        match event {
            Event::SkConnected {
                peer,
                generation,
                commands,
            } => {
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
                    match &msg {
                        SafekeeperMessage::Refused(r) => {
                            self.problems[peer] = Some(format!("refused: {}", r.reason));
                        }
                        SafekeeperMessage::HelloReply(_) => self.problems[peer] = None,
                        _ => {}
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
                    self.problems[peer].get_or_insert(format!("connection lost: {reason}"));
                    self.links[peer] = None;
                    core.on_disconnected(peer);
                }
            }
            Event::SkUnreachable { peer, reason } => self.problems[peer] = Some(reason),
            // No Postgres here.
            Event::PgStreaming { .. }
            | Event::PgWal { .. }
            | Event::PgKeepalive { .. }
            | Event::PgEnded { .. } => {}
        }
    }

    /// Carries out the core's outputs; `Some(end)` if the run is over with a result.
    fn apply_outputs(&mut self, core: &mut Proposer) -> Result<Option<Lsn>, ProposerError> {
        loop {
            let outputs = core.drain_outputs();
            if outputs.is_empty() {
                return Ok(None);
            }
            for out in outputs {
                match out {
                    ProposerOutput::Send { to, msg } => {
                        send_to_link(&mut self.links, core, to, &msg);
                    }
                    ProposerOutput::Reconnect { peer, reason } => {
                        tracing::warn!("reconnecting to safekeeper #{peer}: {reason}");
                        self.problems[peer] = Some(reason);
                        close_link(&mut self.links, peer);
                    }
                    ProposerOutput::StartStreaming { from } => {
                        tracing::info!(
                            term = core.term().0,
                            "sync-safekeepers: elected; the end of WAL is {from} (donor: safekeeper #{})",
                            core.donor().unwrap_or_default()
                        );
                    }
                    ProposerOutput::Committed { commit_lsn } => {
                        tracing::debug!("sync-safekeepers: quorum commit LSN {commit_lsn}");
                    }
                    ProposerOutput::Stopped { reason } => {
                        // A majority already knows the end: a newer proposer taking
                        // over now continues from there, so the result stands.
                        if let Some((end, _)) = self.synced {
                            return Ok(Some(end));
                        }
                        return Err(ProposerError::Stopped(reason));
                    }
                    ProposerOutput::TimelineEmpty => {
                        return Err(ProposerError::EmptyTimeline {
                            timeline_id: self.config.timeline_id,
                        });
                    }
                }
            }
        }
    }

    fn timeout_error(&self, core: &Proposer) -> ProposerError {
        let n = self.config.safekeepers.len();
        let quorum = n / 2 + 1;
        let mut detail = match core.phase() {
            Phase::Greeting => format!(
                "no majority of safekeepers reachable: {} of {n} answered",
                core.greeted_peers()
            ),
            Phase::Campaigning => format!(
                "the election in term {} did not complete: {} of {n} safekeepers voted, {quorum} needed (another proposer may be competing)",
                core.term(),
                core.votes_received()
            ),
            Phase::Elected => {
                let end = core.term_start_lsn();
                let flushes: Vec<String> = core
                    .peer_flush_lsns()
                    .iter()
                    .map(|f| f.map_or("-".to_string(), |l| l.to_string()))
                    .collect();
                format!(
                    "elected in term {} with end of WAL {end}, but only {} of {n} safekeepers hold it and know it committed ({quorum} needed; commit LSN {}, flush LSNs [{}])",
                    core.term(),
                    core.peers_knowing_commit(end),
                    core.commit_lsn(),
                    flushes.join(", ")
                )
            }
            Phase::Stopped(reason) => format!("stopped: {reason}"),
        };
        let problems: Vec<String> = self
            .problems
            .iter()
            .enumerate()
            .filter_map(|(peer, p)| p.as_ref().map(|p| (peer, p)))
            .map(|(peer, p)| {
                format!(
                    "safekeeper #{peer} ({}): {p}",
                    self.config.safekeepers[peer as PeerIndex]
                )
            })
            .collect();
        if !problems.is_empty() {
            detail = format!("{detail}; {}", problems.join("; "));
        }
        ProposerError::SyncTimeout {
            timeline_id: self.config.timeline_id,
            timeout: self.config.timeout,
            detail,
        }
    }
}
