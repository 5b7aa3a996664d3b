//! tarn-server: wires tarn's roles together and manages their processes. Storage and
//! protocol logic live in `tarn-wal` and `tarn-io`; this crate starts, watches and stops
//! the processes that run them, and the PostgreSQL 15 server they serve.
//!
//! - [`postgres`]: a local vanilla PostgreSQL 15 cluster (used by `tarn up` and tests).
//! - [`up`]: `tarn up`, which runs a whole cluster in the foreground.
//! - [`status`]: `tarn status`.
//! - [`branch`] and [`endpoint`]: `tarn branch` (named timelines) and `tarn endpoint`
//!   (computes booted on a branch from a pageserver basebackup).
//! - [`layout`] and [`manifest`]: the cluster directory and its `tarn.json`.

pub mod branch;
mod command;
pub mod endpoint;
pub mod layout;
pub mod manifest;
mod os;
pub mod ports;
pub mod postgres;
pub mod status;
pub mod up;
