//! The pageserver as a service: follow each timeline's committed WAL on the
//! safekeepers ([`follower`]), keep its pages in a [`crate::store::TimelineStore`]
//! (`timeline`), partition timelines across per-core executors (`cores`), create
//! branches, and answer GetPage@LSN, relation size and existence requests over TCP
//! ([`protocol`], [`server`]); find the LSN of a point in time ([`pitr`]).

pub mod client;
mod cores;
pub mod follower;
pub mod pitr;
pub mod protocol;
pub mod server;
mod timeline;

pub use server::{PageserverConfig, PageserverError, run};
