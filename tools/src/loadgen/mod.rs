//! Load generators. Each drives one component through its real protocol and reports
//! throughput and a latency distribution.

pub mod getpage;
pub mod ingest;
pub mod ingest_reads;
pub mod quorum;
pub mod report;
pub mod wal;
