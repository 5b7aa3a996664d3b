//! The safekeeper: a Paxos acceptor that makes a timeline's WAL durable.
//!
//! `acceptor` is the protocol core (pure); `control` its durable state.

pub mod acceptor;
pub mod client;
pub mod control;
pub mod server;
pub mod storage;

pub use acceptor::{Acceptor, Reply, Step, StorageOp};
pub use client::{SafekeeperStatus, query_status};
pub use control::{ControlFileError, ControlState};
pub use server::{SafekeeperConfig, SafekeeperError, run};

use crate::Lsn;

/// Zero bytes to write before WAL at `lsn` when the stored WAL ends at `written_end`.
///
/// A flush acknowledges the MAXALIGNed end of the last record, which may be up to 7
/// padding bytes past the bytes received (see [`Acceptor::on_flushed`]); the next
/// write then starts there. The padding is zeros in Postgres's WAL, so the storage
/// writes zeros for it, keeping the stored bytes and the record tracker contiguous.
pub fn padding_gap(written_end: Lsn, lsn: Lsn) -> Result<usize, String> {
    if lsn < written_end {
        return Err(format!(
            "write at {lsn} is below the end of stored WAL {written_end}"
        ));
    }
    let gap = lsn.0 - written_end.0;
    if gap == 0 {
        return Ok(0);
    }
    if gap >= 8 || written_end.max_align() != lsn {
        return Err(format!(
            "write at {lsn} leaves a hole after the end of stored WAL {written_end}"
        ));
    }
    Ok(gap as usize)
}
