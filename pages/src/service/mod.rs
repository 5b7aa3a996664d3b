//! The pageserver as a service: follow one timeline's committed WAL on the safekeepers
//! ([`follower`]), keep its pages in a [`crate::store::TimelineStore`] and answer
//! GetPage@LSN, relation size and existence requests over TCP ([`protocol`],
//! [`server`]).

pub mod client;
pub mod follower;
pub mod protocol;
pub mod server;

pub use server::{PageserverConfig, PageserverError, run};
