//! The proposer: Postgres's synchronous standby, which makes every WAL byte durable on
//! a quorum of safekeepers before telling Postgres it is flushed.
//!
//! `core` is the protocol state machine (pure).

pub mod core;
pub mod service;

pub use self::core::{PeerIndex, Phase, Proposer, ProposerOutput, ProposerSettings};
pub use service::{ProposerConfig, ProposerError, run};
