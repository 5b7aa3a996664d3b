//! tarn-tools: load generators and operator tools that exercise tarn's components
//! from the outside, over their real protocols.
//!
//! - [`loadgen::wal`]: `tarn loadgen wal`, a proposer that drives the safekeepers'
//!   append path with synthetic WAL and measures quorum append latency and throughput.

pub mod loadgen;
