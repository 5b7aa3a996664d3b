//! `tarn-io`: the storage-engine plumbing that knows nothing of Postgres.
//!
//! - [`runtime`]: thread-per-core glommio executors (one pinned executor per core,
//!   `io_memory` sized to fit `RLIMIT_MEMLOCK`) and [`runtime::CoreMailbox`], the
//!   cross-thread mailbox that routes work (e.g. accepted connections) to a core.
//! - [`aligned`]: [`aligned::AlignedBuf`], a heap buffer aligned to the O_DIRECT block.
//! - [`segmented_log`]: [`segmented_log::SegmentedLog`], an append-mostly log of
//!   fixed-size segment files written with O_DIRECT and group commit.
//! - [`error`]: [`IoError`], the one error type of this crate.

pub mod aligned;
pub mod error;
pub mod runtime;
pub mod segmented_log;

pub use aligned::{AlignedBuf, BLOCK_SIZE_BYTES};
pub use error::IoError;
pub use runtime::{
    CoreIndex, CoreMailbox, MailboxReceiver, MailboxSendError, MailboxSender, run_per_core,
    run_per_core_from,
};
pub use segmented_log::{
    HexSegmentNaming, SegmentNaming, SegmentedLog, SegmentedLogConfig, SegmentedLogStats,
};
