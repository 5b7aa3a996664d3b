//! The safekeeper wire protocol: the messages a proposer and a safekeeper exchange, and
//! their binary framing.
//!
//! Every frame is `magic (u32) | kind (u8) | body length (u32) | body`, little-endian.
//! Bodies are decoded strictly: a truncated field, trailing bytes, an unknown kind or an
//! oversized frame is an error that names the problem, so hostile input can never make a
//! safekeeper guess.

pub mod blocking;
mod codec;

pub use codec::{
    FRAME_HEADER_BYTES, FrameHeader, MAX_FRAME_BODY_BYTES, PROTOCOL_MAGIC, ProtocolError,
    decode_frame_header, decode_proposer_message, decode_safekeeper_message,
    encode_proposer_message, encode_safekeeper_message,
};

use bytes::Bytes;

use crate::{Lsn, NodeId, SystemId, Term, TimelineId};

/// Version of this protocol; a peer speaking another one is refused at `Hello`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest WAL payload of one append. Postgres's walsender sends at most 128 KiB per
/// message; 1 MiB leaves room for batching without letting one frame hog a connection.
pub const MAX_APPEND_WAL_BYTES: usize = 1 << 20;

/// One switch of term in a timeline's history: from `lsn` on, WAL was written by the
/// proposer of `term`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermSwitch {
    pub term: Term,
    pub lsn: Lsn,
}

/// Ordered term switches of a timeline (strictly increasing terms, non-decreasing LSNs).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TermHistory(pub Vec<TermSwitch>);

/// Upper bound on term switches carried in one message; a history grows by one per
/// election, so this is generous while still bounding a hostile frame's allocation.
pub const MAX_TERM_HISTORY_ENTRIES: usize = 100_000;

impl TermHistory {
    /// A history from `(term, start LSN)` pairs, in order.
    pub fn from_pairs(pairs: &[(u64, u64)]) -> TermHistory {
        TermHistory(
            pairs
                .iter()
                .map(|&(term, lsn)| TermSwitch {
                    term: Term(term),
                    lsn: Lsn(lsn),
                })
                .collect(),
        )
    }

    pub fn last_term(&self) -> Option<Term> {
        self.0.last().map(|s| s.term)
    }

    /// The history as it applies to WAL that ends at `end`: switches that start strictly
    /// after `end` describe WAL this node does not have, so they do not count for it.
    pub fn up_to(&self, end: Lsn) -> TermHistory {
        TermHistory(self.0.iter().copied().filter(|s| s.lsn <= end).collect())
    }

    /// Checks the shape every valid history has.
    pub fn validate(&self) -> Result<(), String> {
        for pair in self.0.windows(2) {
            if pair[1].term <= pair[0].term {
                return Err(format!(
                    "term history is not strictly increasing in term ({} then {})",
                    pair[0].term, pair[1].term
                ));
            }
            if pair[1].lsn < pair[0].lsn {
                return Err(format!(
                    "term history goes backwards in LSN ({} then {})",
                    pair[0].lsn, pair[1].lsn
                ));
            }
        }
        Ok(())
    }

    /// Highest LSN up to which WAL described by `self` (ending at `own_end`) is the same
    /// as WAL described by `proposer` (whose last term is open-ended). Mirrors the
    /// "highest common point" of Neon's safekeeper: follow the histories while their
    /// terms match; the common point is where the first of the two leaves that term.
    pub fn highest_common_point(&self, own_end: Lsn, proposer: &TermHistory) -> Option<Lsn> {
        let own = self.up_to(own_end);
        let mut matched = None;
        for (i, (a, b)) in own.0.iter().zip(proposer.0.iter()).enumerate() {
            if a.term != b.term || a.lsn != b.lsn {
                break;
            }
            matched = Some(i);
        }
        let i = matched?;
        let own_term_end = own.0.get(i + 1).map_or(own_end, |s| s.lsn);
        let proposer_term_end = proposer.0.get(i + 1).map_or(Lsn::MAX, |s| s.lsn);
        Some(own_term_end.min(proposer_term_end))
    }
}

/// First message of a proposer on a connection: who it is and which timeline it drives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub protocol_version: u32,
    pub system_id: SystemId,
    pub timeline_id: TimelineId,
    pub pg_version: u32,
    pub segment_size_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HelloReply {
    pub node_id: NodeId,
    pub term: Term,
    /// Start of the timeline's WAL, or `Lsn::INVALID` if no WAL was ever accepted.
    pub timeline_start_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteRequest {
    pub term: Term,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VoteResponse {
    /// The safekeeper's term after handling the request.
    pub term: Term,
    pub vote_given: bool,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub timeline_start_lsn: Lsn,
    /// History of the WAL the safekeeper holds (cut at `flush_lsn`).
    pub term_history: TermHistory,
}

/// Announces the winner of `term` and the history its WAL continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Elected {
    pub term: Term,
    /// The full history; its last switch is `term` starting at the term start LSN.
    pub term_history: TermHistory,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectedAck {
    pub term: Term,
    /// The safekeeper's flush LSN after discarding any divergent tail.
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendRequest {
    pub term: Term,
    pub begin_lsn: Lsn,
    /// The proposer's quorum commit LSN, so safekeepers learn what is committed.
    pub commit_lsn: Lsn,
    pub wal: Bytes,
}

impl AppendRequest {
    pub fn end_lsn(&self) -> Lsn {
        self.begin_lsn.plus(self.wal.len() as u64)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    pub term: Term,
    /// End of the last complete WAL record durably on this safekeeper's disk.
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
}

/// Asks a safekeeper for WAL it holds (for catching up another safekeeper).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadWalRequest {
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalChunk {
    pub start_lsn: Lsn,
    pub wal: Bytes,
}

/// A safekeeper's view of one timeline, for operators.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimelineStatus {
    pub timeline_id: TimelineId,
    pub system_id: SystemId,
    pub term: Term,
    pub timeline_start_lsn: Lsn,
    pub flush_lsn: Lsn,
    pub commit_lsn: Lsn,
    pub term_history: TermHistory,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StatusReply {
    pub node_id: NodeId,
    pub timelines: Vec<TimelineStatus>,
}

/// The safekeeper will not do what was asked. `term` lets a proposer see that it lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub term: Term,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposerMessage {
    Hello(Hello),
    VoteRequest(VoteRequest),
    Elected(Elected),
    Append(AppendRequest),
    ReadWal(ReadWalRequest),
    /// Operator query; needs no `Hello`.
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SafekeeperMessage {
    HelloReply(HelloReply),
    Vote(VoteResponse),
    ElectedAck(ElectedAck),
    AppendResponse(AppendResponse),
    WalChunk(WalChunk),
    Status(StatusReply),
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(entries: &[(u64, u64)]) -> TermHistory {
        TermHistory::from_pairs(entries)
    }

    #[test]
    fn common_point_follows_matching_terms() {
        // Same lineage, the safekeeper lags: common point is its own end.
        assert_eq!(
            h(&[(1, 0)]).highest_common_point(Lsn(50), &h(&[(1, 0), (2, 100)])),
            Some(Lsn(50))
        );
        // The safekeeper went further in term 1 than the new term's start: cut there.
        assert_eq!(
            h(&[(1, 0)]).highest_common_point(Lsn(150), &h(&[(1, 0), (2, 100)])),
            Some(Lsn(100))
        );
        // Divergent term 2 on the safekeeper, proposer continues term 1 into term 3.
        assert_eq!(
            h(&[(1, 0), (2, 80)]).highest_common_point(Lsn(150), &h(&[(1, 0), (3, 120)])),
            Some(Lsn(80))
        );
        // Nothing in common.
        assert_eq!(
            h(&[(2, 0)]).highest_common_point(Lsn(10), &h(&[(1, 0), (3, 5)])),
            None
        );
        // Switches past the safekeeper's end do not count for it.
        assert_eq!(
            h(&[(1, 0), (2, 100)]).highest_common_point(Lsn(60), &h(&[(1, 0), (3, 90)])),
            Some(Lsn(60))
        );
    }

    #[test]
    fn validate_rejects_malformed_histories() {
        assert!(h(&[(1, 0), (2, 10)]).validate().is_ok());
        assert!(h(&[(2, 0), (2, 10)]).validate().is_err());
        assert!(h(&[(1, 10), (2, 5)]).validate().is_err());
    }
}
