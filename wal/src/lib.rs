//! PostgreSQL WAL for tarn: the on-disk format, the safekeeper (a Paxos acceptor that
//! makes WAL durable) and the proposer (Postgres's synchronous standby that drives the
//! quorum).

pub mod lsn;

pub use lsn::{Lsn, NodeId, SystemId, Term, TimelineId};
