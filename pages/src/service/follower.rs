//! Follows one timeline's committed WAL on the safekeepers.
//!
//! Only committed WAL is ever returned: a safekeeper's WAL up to
//! `min(its commit_lsn, its flush_lsn)` is committed WAL (its commit LSN only moves
//! forward, it learns it from the proposer of the term whose WAL it holds, and the
//! acceptor never truncates below it), whereas WAL above a safekeeper's commit LSN may
//! be a divergent tail a later term truncates, even when another safekeeper's commit
//! LSN is higher. So the follower polls every safekeeper's `Status`, picks the one with
//! the most readable committed WAL, says `Hello` (with the system id from its status)
//! and reads with `ReadWal` up to that bound; on any error it drops the connection and
//! polls again.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tarn_wal::protocol::blocking::{read_safekeeper_message, write_proposer_message};
use tarn_wal::protocol::{
    Hello, PROTOCOL_VERSION, ProposerMessage, ReadWalRequest, SafekeeperMessage,
};
use tarn_wal::safekeeper::query_status;
use tarn_wal::{Lsn, SystemId, TimelineId};

/// PG_VERSION_NUM of the Postgres whose WAL tarn follows; the safekeeper compares
/// major versions only.
pub const PG_VERSION_NUM: u32 = 150_000;
/// How often safekeepers are asked for their commit LSNs while caught up: the bound on
/// how stale the pageserver is behind an idle-then-busy primary.
pub const STATUS_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Connect, read and write timeout towards one safekeeper: local or LAN peers answer in
/// milliseconds; a stuck one must not stall ingest for long before we switch.
pub const SAFEKEEPER_IO_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(
        "the safekeepers' WAL of timeline {timeline_id} starts at {timeline_start}, above {needed} where this pageserver needs to continue"
    )]
    Gap {
        timeline_id: TimelineId,
        timeline_start: Lsn,
        needed: Lsn,
    },
}

/// A committed piece of WAL.
#[derive(Clone, Debug)]
pub struct CommittedWal {
    pub start_lsn: Lsn,
    pub wal: Bytes,
}

struct Connection {
    addr: SocketAddr,
    stream: TcpStream,
    /// Committed WAL readable from this safekeeper ends here (as of the last poll).
    readable_end: Lsn,
}

pub struct WalFollower {
    timeline_id: TimelineId,
    safekeepers: Vec<SocketAddr>,
    segment_size_bytes: u64,
    system_id: Option<SystemId>,
    connection: Option<Connection>,
    last_poll: Option<Instant>,
}

impl WalFollower {
    pub fn new(
        timeline_id: TimelineId,
        safekeepers: Vec<SocketAddr>,
        segment_size_bytes: u64,
    ) -> WalFollower {
        WalFollower {
            timeline_id,
            safekeepers,
            segment_size_bytes,
            system_id: None,
            connection: None,
            last_poll: None,
        }
    }

    /// The cluster's system id, once a safekeeper has reported the timeline.
    pub fn system_id(&self) -> Option<SystemId> {
        self.system_id
    }

    /// Learns the system id (polling the safekeepers) without reading WAL.
    pub fn discover(&mut self) {
        if self.system_id.is_none() {
            let _ = self.choose_safekeeper(Lsn::MAX);
        }
    }

    /// Committed WAL starting exactly at `from`, or `None` when there is none now (or a
    /// safekeeper failed: the next call polls again).
    pub fn next_chunk(&mut self, from: Lsn) -> Result<Option<CommittedWal>, FollowError> {
        let has_more = self
            .connection
            .as_ref()
            .is_some_and(|c| c.readable_end > from);
        if !has_more {
            self.connection = None;
            if self
                .last_poll
                .is_some_and(|t| t.elapsed() < STATUS_POLL_INTERVAL)
            {
                return Ok(None);
            }
            self.connection = self.choose_safekeeper(from)?;
        }
        let Some(connection) = self.connection.as_mut() else {
            return Ok(None);
        };
        match read_wal(connection, from) {
            Ok(chunk) => Ok(Some(chunk)),
            Err(why) => {
                tracing::warn!(safekeeper = %connection.addr, "reading WAL at {from} failed: {why}; switching");
                self.connection = None;
                Ok(None)
            }
        }
    }

    /// Polls every safekeeper; connects to the one with the most committed WAL above
    /// `from`, if any has some.
    fn choose_safekeeper(&mut self, from: Lsn) -> Result<Option<Connection>, FollowError> {
        self.last_poll = Some(Instant::now());
        let mut best: Option<(SocketAddr, Lsn, Lsn)> = None;
        for &addr in &self.safekeepers {
            let status = match query_status(addr, SAFEKEEPER_IO_TIMEOUT) {
                Ok(status) => status,
                Err(e) => {
                    tracing::debug!("status of {addr}: {e}");
                    continue;
                }
            };
            let Some(t) = status
                .timelines
                .iter()
                .find(|t| t.timeline_id == self.timeline_id)
            else {
                continue;
            };
            if t.timeline_start_lsn == Lsn::INVALID {
                continue;
            }
            self.system_id.get_or_insert(t.system_id);
            let readable = t.commit_lsn.min(t.flush_lsn);
            if best.is_none_or(|(_, r, _)| readable > r) {
                best = Some((addr, readable, t.timeline_start_lsn));
            }
        }
        let Some((addr, readable, timeline_start)) = best else {
            return Ok(None);
        };
        if from == Lsn::MAX || readable <= from {
            return Ok(None);
        }
        if timeline_start > from {
            return Err(FollowError::Gap {
                timeline_id: self.timeline_id,
                timeline_start,
                needed: from,
            });
        }
        let Some(system_id) = self.system_id else {
            return Ok(None);
        };
        match self.connect(addr, system_id) {
            Ok(connection) => Ok(Some(connection)),
            Err(why) => {
                tracing::warn!(safekeeper = %addr, "cannot read WAL from it: {why}");
                Ok(None)
            }
        }
    }

    fn connect(&self, addr: SocketAddr, system_id: SystemId) -> Result<Connection, String> {
        let mut stream =
            TcpStream::connect_timeout(&addr, SAFEKEEPER_IO_TIMEOUT).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(SAFEKEEPER_IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(SAFEKEEPER_IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| e.to_string())?;
        let hello = ProposerMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            system_id,
            timeline_id: self.timeline_id,
            pg_version: PG_VERSION_NUM,
            segment_size_bytes: self.segment_size_bytes,
        });
        write_proposer_message(&mut stream, &hello).map_err(|e| e.to_string())?;
        match read_safekeeper_message(&mut stream).map_err(|e| e.to_string())? {
            SafekeeperMessage::HelloReply(reply) => Ok(Connection {
                addr,
                stream,
                readable_end: reply.commit_lsn.min(reply.flush_lsn),
            }),
            SafekeeperMessage::Refused(r) => Err(format!("Hello refused: {}", r.reason)),
            other => Err(format!("unexpected answer to Hello: {other:?}")),
        }
    }
}

fn read_wal(connection: &mut Connection, from: Lsn) -> Result<CommittedWal, String> {
    let request = ProposerMessage::ReadWal(ReadWalRequest {
        start_lsn: from,
        end_lsn: connection.readable_end,
    });
    write_proposer_message(&mut connection.stream, &request).map_err(|e| e.to_string())?;
    match read_safekeeper_message(&mut connection.stream).map_err(|e| e.to_string())? {
        SafekeeperMessage::WalChunk(chunk) => {
            let end = chunk.start_lsn.plus(chunk.wal.len() as u64);
            if chunk.start_lsn != from || chunk.wal.is_empty() || end > connection.readable_end {
                return Err(format!(
                    "asked for WAL {from}..{}, got {}..{end}",
                    connection.readable_end, chunk.start_lsn
                ));
            }
            Ok(CommittedWal {
                start_lsn: chunk.start_lsn,
                wal: chunk.wal,
            })
        }
        SafekeeperMessage::Refused(r) => Err(format!("ReadWal refused: {}", r.reason)),
        other => Err(format!("unexpected answer to ReadWal: {other:?}")),
    }
}
