//! The Paxos acceptor for one timeline, as a pure state machine: it takes protocol
//! messages and returns the storage operations to perform (in order) and the reply.
//! No IO happens here, so the same code runs in the server and in the simulation.

use bytes::Bytes;

use crate::protocol::{
    AppendRequest, AppendResponse, Elected, ElectedAck, Hello, HelloReply, PROTOCOL_VERSION,
    ReadWalRequest, Refusal, SafekeeperMessage, TermHistory, TimelineStatus, VoteRequest,
    VoteResponse,
};
use crate::{Lsn, NodeId, Term};

use super::control::ControlState;

/// A storage operation the driver must carry out, in order, before replying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageOp {
    /// Atomically and durably replace the control file.
    PersistControl(ControlState),
    /// Durably discard all WAL at and after this LSN (zeroed on disk, so a crash can't
    /// bring it back). On an empty log this sets where WAL starts.
    TruncateWal(Lsn),
    /// Write WAL at `lsn`; durable only after the driver's next flush.
    WriteWal { lsn: Lsn, wal: Bytes },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Now(SafekeeperMessage),
    /// Flush written WAL, then reply with [`Acceptor::on_flushed`].
    AfterFlush,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub ops: Vec<StorageOp>,
    pub reply: Reply,
}

impl Step {
    fn reply(msg: SafekeeperMessage) -> Step {
        Step {
            ops: Vec::new(),
            reply: Reply::Now(msg),
        }
    }
}

/// One timeline's acceptor.
#[derive(Debug)]
pub struct Acceptor {
    node_id: NodeId,
    control: ControlState,
    /// End of WAL written (maybe not yet durable).
    write_lsn: Lsn,
    /// End of the last complete record that is durable.
    flush_lsn: Lsn,
}

impl Acceptor {
    /// A timeline seen for the first time: its control state comes from the proposer's
    /// `Hello`. The caller persists `control()` before replying.
    pub fn create(node_id: NodeId, hello: &Hello) -> Acceptor {
        let control = ControlState {
            system_id: hello.system_id,
            timeline_id: hello.timeline_id,
            pg_version: hello.pg_version,
            segment_size_bytes: hello.segment_size_bytes,
            timeline_start_lsn: Lsn::INVALID,
            term: Term(0),
            term_history: TermHistory::default(),
            commit_lsn: Lsn::INVALID,
            flush_lsn_hint: Lsn::INVALID,
        };
        Acceptor {
            node_id,
            control,
            write_lsn: Lsn::INVALID,
            flush_lsn: Lsn::INVALID,
        }
    }

    /// An existing timeline after restart; `flush_lsn` is the end of WAL recovery found.
    pub fn recover(node_id: NodeId, control: ControlState, flush_lsn: Lsn) -> Acceptor {
        Acceptor {
            node_id,
            control,
            write_lsn: flush_lsn,
            flush_lsn,
        }
    }

    pub fn control(&self) -> &ControlState {
        &self.control
    }
    pub fn flush_lsn(&self) -> Lsn {
        self.flush_lsn
    }
    pub fn write_lsn(&self) -> Lsn {
        self.write_lsn
    }
    pub fn term(&self) -> Term {
        self.control.term
    }

    pub fn status(&self) -> TimelineStatus {
        TimelineStatus {
            timeline_id: self.control.timeline_id,
            system_id: self.control.system_id,
            term: self.control.term,
            timeline_start_lsn: self.control.timeline_start_lsn,
            flush_lsn: self.flush_lsn,
            commit_lsn: self.control.commit_lsn,
            term_history: self.control.term_history.up_to(self.flush_lsn),
        }
    }

    fn refuse(&self, reason: String) -> Step {
        Step::reply(SafekeeperMessage::Refused(Refusal {
            term: self.control.term,
            reason,
        }))
    }

    /// Checks a proposer's `Hello` against this timeline.
    pub fn handle_hello(&self, hello: &Hello) -> Step {
        let c = &self.control;
        if hello.protocol_version != PROTOCOL_VERSION {
            return self.refuse(format!(
                "protocol version {} is not supported (this safekeeper speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ));
        }
        if hello.system_id != c.system_id {
            return self.refuse(format!(
                "wrong system id: timeline {} belongs to database system {}, the proposer's is {}",
                c.timeline_id, c.system_id, hello.system_id
            ));
        }
        if hello.pg_version / 10000 != c.pg_version / 10000
            || hello.segment_size_bytes != c.segment_size_bytes
        {
            return self.refuse(format!(
                "timeline {} holds WAL of Postgres {} with {}-byte segments; the proposer has Postgres {} with {}-byte segments",
                c.timeline_id, c.pg_version, c.segment_size_bytes, hello.pg_version, hello.segment_size_bytes
            ));
        }
        Step::reply(SafekeeperMessage::HelloReply(HelloReply {
            node_id: self.node_id,
            term: c.term,
            timeline_start_lsn: c.timeline_start_lsn,
            flush_lsn: self.flush_lsn,
            commit_lsn: c.commit_lsn,
        }))
    }

    /// A vote is a durable promise to ignore every lower term.
    pub fn handle_vote_request(&mut self, req: &VoteRequest) -> Step {
        let mut ops = Vec::new();
        let vote_given = req.term > self.control.term;
        if vote_given {
            self.control.term = req.term;
            ops.push(StorageOp::PersistControl(self.control.clone()));
        }
        Step {
            ops,
            reply: Reply::Now(SafekeeperMessage::Vote(VoteResponse {
                term: self.control.term,
                vote_given,
                flush_lsn: self.flush_lsn,
                commit_lsn: self.control.commit_lsn,
                timeline_start_lsn: self.control.timeline_start_lsn,
                term_history: self.control.term_history.up_to(self.flush_lsn),
            })),
        }
    }

    /// The winner of `term` announces its history: discard whatever WAL of ours diverges
    /// from it, then adopt it. Idempotent, so a duplicated announcement is harmless.
    pub fn handle_elected(&mut self, msg: &Elected) -> Step {
        if msg.term < self.control.term {
            return self.refuse(format!(
                "election of term {} is stale: this safekeeper already promised term {}",
                msg.term, self.control.term
            ));
        }
        let history = &msg.term_history;
        if let Err(e) = history.validate() {
            return self.refuse(format!("election of term {}: {e}", msg.term));
        }
        let (Some(first), Some(last)) = (history.0.first(), history.0.last()) else {
            return self.refuse(format!(
                "election of term {} carries an empty term history",
                msg.term
            ));
        };
        if last.term != msg.term {
            return self.refuse(format!(
                "election of term {} carries a history that ends in term {}",
                msg.term, last.term
            ));
        }
        let start = self.control.timeline_start_lsn;
        if start != Lsn::INVALID && first.lsn != start {
            return self.refuse(format!(
                "timeline {} starts at {start} here, but the proposer's history starts at {}",
                self.control.timeline_id, first.lsn
            ));
        }

        let mut ops = Vec::new();
        if msg.term > self.control.term {
            self.control.term = msg.term;
            ops.push(StorageOp::PersistControl(self.control.clone()));
        }
        if self.control.term_history.last_term() != Some(msg.term) {
            let common = if start == Lsn::INVALID {
                None
            } else {
                self.control
                    .term_history
                    .highest_common_point(self.flush_lsn, history)
            };
            // Nothing in common: everything we hold is from another lineage.
            let common = common.unwrap_or(first.lsn);
            if common < self.control.commit_lsn.min(self.flush_lsn) {
                // Committed WAL is on a majority, so every winner's history contains it.
                // Reaching here means a broken invariant: refuse rather than lose it.
                return self.refuse(format!(
                    "refusing to truncate committed WAL: election of term {} diverges at {common}, below commit LSN {}",
                    msg.term, self.control.commit_lsn
                ));
            }
            if start == Lsn::INVALID || self.write_lsn > common {
                // Lower the recovery hint first: the truncated bytes must never be
                // scanned as if they were still ours.
                if self.control.flush_lsn_hint > common || start == Lsn::INVALID {
                    self.control.flush_lsn_hint = common;
                    if start == Lsn::INVALID {
                        self.control.timeline_start_lsn = first.lsn;
                    }
                    ops.push(StorageOp::PersistControl(self.control.clone()));
                }
                ops.push(StorageOp::TruncateWal(common));
                self.write_lsn = common;
                // A log that starts here holds everything before it (nothing), so its
                // flush LSN is its start.
                self.flush_lsn = if start == Lsn::INVALID {
                    common
                } else {
                    self.flush_lsn.min(common)
                };
            }
            self.control.term_history = history.clone();
            ops.push(StorageOp::PersistControl(self.control.clone()));
        }
        Step {
            ops,
            reply: Reply::Now(SafekeeperMessage::ElectedAck(ElectedAck {
                term: self.control.term,
                flush_lsn: self.flush_lsn,
                commit_lsn: self.control.commit_lsn,
            })),
        }
    }

    pub fn handle_append(&mut self, req: &AppendRequest) -> Step {
        if req.term < self.control.term {
            return self.refuse(format!(
                "append from term {} is from the past: this safekeeper is in term {}",
                req.term, self.control.term
            ));
        }
        if self.control.term_history.last_term() != Some(req.term) {
            return self.refuse(format!(
                "append for term {} arrived before that term's election was announced here",
                req.term
            ));
        }
        if req.begin_lsn > self.write_lsn {
            return self.refuse(format!(
                "append beyond the end: it starts at {} but this safekeeper's WAL ends at {}",
                req.begin_lsn, self.write_lsn
            ));
        }
        if req.begin_lsn < self.control.timeline_start_lsn {
            return self.refuse(format!(
                "append at {} is before the timeline's start {}",
                req.begin_lsn, self.control.timeline_start_lsn
            ));
        }
        self.control.commit_lsn = self.control.commit_lsn.max(req.commit_lsn);
        let end = req.end_lsn();
        let mut ops = Vec::new();
        if end > self.write_lsn {
            // Bytes below write_lsn came from this same term, so they are identical:
            // only the new suffix needs writing.
            let skip = (self.write_lsn.0 - req.begin_lsn.0) as usize;
            ops.push(StorageOp::WriteWal {
                lsn: self.write_lsn,
                wal: req.wal.slice(skip..),
            });
            self.write_lsn = end;
        }
        Step {
            ops,
            reply: Reply::AfterFlush,
        }
    }

    /// Called once written WAL is durable; `record_end` is the end of the last complete
    /// record that is on disk. That end is MAXALIGNed like Postgres's EndRecPtr, so it
    /// can lie up to 7 padding bytes past what was written when a chunk was cut inside
    /// the padding. Padding is zeros in Postgres's WAL and on our zero-filled (and
    /// zeroed-on-truncate) segments, so those bytes count as written: flush LSNs stay
    /// record boundaries, which restart recovery relies on.
    pub fn on_flushed(&mut self, record_end: Lsn) -> SafekeeperMessage {
        self.write_lsn = self.write_lsn.max(record_end);
        self.flush_lsn = self.flush_lsn.max(record_end);
        SafekeeperMessage::AppendResponse(AppendResponse {
            term: self.control.term,
            flush_lsn: self.flush_lsn,
            commit_lsn: self.control.commit_lsn,
        })
    }

    /// The acknowledgement of what is durable now (after a flush that raced with a
    /// truncation and so proves nothing new).
    pub fn current_append_response(&self) -> SafekeeperMessage {
        SafekeeperMessage::AppendResponse(AppendResponse {
            term: self.control.term,
            flush_lsn: self.flush_lsn,
            commit_lsn: self.control.commit_lsn,
        })
    }

    /// Which WAL range to serve for a read: only durable, complete records.
    pub fn check_read(
        &self,
        req: &ReadWalRequest,
        max_bytes: usize,
    ) -> Result<(Lsn, usize), Refusal> {
        let start = self.control.timeline_start_lsn;
        if start == Lsn::INVALID
            || req.start_lsn < start
            || req.start_lsn >= self.flush_lsn
            || req.end_lsn <= req.start_lsn
        {
            return Err(Refusal {
                term: self.control.term,
                reason: format!(
                    "cannot serve WAL {}..{}: this safekeeper holds {}..{}",
                    req.start_lsn, req.end_lsn, start, self.flush_lsn
                ),
            });
        }
        let end = req.end_lsn.min(self.flush_lsn);
        let len = ((end.0 - req.start_lsn.0) as usize).min(max_bytes);
        Ok((req.start_lsn, len))
    }

    /// A control state worth persisting now (commit LSN or recovery hint moved on), so
    /// that a restart scans little WAL. The caller persists it, then calls
    /// [`Acceptor::control_persisted`].
    pub fn control_to_checkpoint(&self) -> Option<ControlState> {
        if self.flush_lsn > self.control.flush_lsn_hint {
            let mut c = self.control.clone();
            c.flush_lsn_hint = self.flush_lsn;
            Some(c)
        } else {
            None
        }
    }

    pub fn control_persisted(&mut self, persisted: &ControlState) {
        // Only the hint is adopted: everything else in `control` is at least as new.
        if persisted.term == self.control.term && persisted.flush_lsn_hint <= self.flush_lsn {
            self.control.flush_lsn_hint = self.control.flush_lsn_hint.max(persisted.flush_lsn_hint);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SystemId, TimelineId};

    fn hello() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            system_id: SystemId(42),
            timeline_id: TimelineId(1),
            pg_version: 150018,
            segment_size_bytes: 16 << 20,
        }
    }

    fn history(entries: &[(u64, u64)]) -> TermHistory {
        TermHistory::from_pairs(entries)
    }

    fn refusal(step: &Step) -> String {
        match &step.reply {
            Reply::Now(SafekeeperMessage::Refused(r)) => r.reason.clone(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn elected_acceptor() -> Acceptor {
        let mut a = Acceptor::create(NodeId(1), &hello());
        a.handle_vote_request(&VoteRequest { term: Term(1) });
        a.handle_elected(&Elected {
            term: Term(1),
            term_history: history(&[(1, 1000)]),
        });
        a
    }

    #[test]
    fn votes_are_promises() {
        let mut a = Acceptor::create(NodeId(1), &hello());
        let s = a.handle_vote_request(&VoteRequest { term: Term(3) });
        assert!(matches!(s.ops[..], [StorageOp::PersistControl(ref c)] if c.term == Term(3)));
        let s = a.handle_vote_request(&VoteRequest { term: Term(3) });
        assert!(matches!(
            s.reply,
            Reply::Now(SafekeeperMessage::Vote(VoteResponse {
                vote_given: false,
                ..
            }))
        ));
        assert!(s.ops.is_empty());
    }

    #[test]
    fn first_election_sets_where_wal_starts() {
        let a = elected_acceptor();
        assert_eq!(a.control().timeline_start_lsn, Lsn(1000));
        assert_eq!(a.write_lsn(), Lsn(1000));
        assert_eq!(a.flush_lsn(), Lsn(1000));
    }

    #[test]
    fn hostile_appends_are_refused_by_name() {
        let mut a = elected_acceptor();
        let append = |term, begin| AppendRequest {
            term: Term(term),
            begin_lsn: Lsn(begin),
            commit_lsn: Lsn(0),
            wal: Bytes::from_static(b"12345678"),
        };
        assert!(refusal(&a.handle_append(&append(1, 2000))).contains("append beyond the end"));
        assert!(
            refusal(&a.handle_append(&append(2, 1000))).contains("before that term's election")
        );
        a.handle_vote_request(&VoteRequest { term: Term(5) });
        assert!(refusal(&a.handle_append(&append(1, 1000))).contains("from the past"));
        let mut other = hello();
        other.system_id = SystemId(7);
        assert!(refusal(&a.handle_hello(&other)).contains("wrong system id"));
    }

    #[test]
    fn election_truncates_a_divergent_tail_but_never_committed_wal() {
        let mut a = elected_acceptor();
        let s = a.handle_append(&AppendRequest {
            term: Term(1),
            begin_lsn: Lsn(1000),
            commit_lsn: Lsn(1008),
            wal: Bytes::from(vec![7u8; 100]),
        });
        assert_eq!(s.reply, Reply::AfterFlush);
        a.on_flushed(Lsn(1100));
        // Term 2 continued term 1 only up to 1050: our bytes above diverge.
        a.handle_vote_request(&VoteRequest { term: Term(2) });
        let s = a.handle_elected(&Elected {
            term: Term(2),
            term_history: history(&[(1, 1000), (2, 1050)]),
        });
        assert!(s.ops.contains(&StorageOp::TruncateWal(Lsn(1050))));
        assert_eq!(a.flush_lsn(), Lsn(1050));
        // A duplicate announcement changes nothing.
        assert!(
            a.handle_elected(&Elected {
                term: Term(2),
                term_history: history(&[(1, 1000), (2, 1050)])
            })
            .ops
            .is_empty()
        );
        // A history that would cut below the commit LSN is refused.
        let mut b = elected_acceptor();
        b.handle_append(&AppendRequest {
            term: Term(1),
            begin_lsn: Lsn(1000),
            commit_lsn: Lsn(1090),
            wal: Bytes::from(vec![1u8; 100]),
        });
        b.on_flushed(Lsn(1100));
        let s = b.handle_elected(&Elected {
            term: Term(3),
            term_history: history(&[(1, 1000), (3, 1020)]),
        });
        assert!(refusal(&s).contains("refusing to truncate committed WAL"));
    }
}
