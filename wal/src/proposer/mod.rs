//! The proposer: Postgres's synchronous standby, which makes every WAL byte durable on
//! a quorum of safekeepers before telling Postgres it is flushed.
//!
//! `core` is the protocol state machine (pure); `service` runs it against Postgres and
//! the safekeepers; `sync` runs it without Postgres to fix the end of a timeline's WAL
//! after its compute died.

pub mod core;
pub mod service;
pub mod sync;
#[cfg(test)]
mod tests;

pub use self::core::{PeerIndex, Phase, Proposer, ProposerMode, ProposerOutput, ProposerSettings};
pub use service::{ProposerConfig, ProposerError, run};
pub use sync::{DEFAULT_SYNC_TIMEOUT, SYNC_PG_VERSION_NUM, SyncConfig, sync_safekeepers};
