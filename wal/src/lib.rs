//! PostgreSQL WAL for tarn: the on-disk format, the safekeeper (a Paxos acceptor that
//! makes WAL durable) and the proposer (Postgres's synchronous standby that drives the
//! quorum).

pub mod decode;
pub mod format;
pub mod lsn;
pub mod proposer;
pub mod protocol;
pub mod replication;
pub mod safekeeper;
pub mod sim;

pub use lsn::{Lsn, NodeId, SystemId, Term, TimelineId};
