//! PostgreSQL 15 pages for tarn's pageserver: the slotted page layout and the
//! bufpage.c routines ([`page`]), heap tuple headers ([`heap_tuple`]), visibility map
//! pages ([`vm`]), btree pages and index tuples ([`btree`]), the masks of `wal_consistency_checking` ([`mask`]) and native redo
//! ([`redo`]) that rebuilds a page at any LSN byte for byte as Postgres's replay would.
//!
//! Native redo covers:
//! - XLOG: FPI, FPI_FOR_HINT (image restore);
//! - Heap: INSERT (+INIT), DELETE, UPDATE and HOT_UPDATE (both pages, prefix/suffix
//!   compression, new page init), LOCK, INPLACE, CONFIRM;
//! - Heap2: PRUNE, VACUUM, FREEZE_PAGE, VISIBLE (heap and visibility map page),
//!   MULTI_INSERT (+INIT), LOCK_UPDATED;
//! - Btree: every record type (inserts, posting list splits, page splits, dedup,
//!   vacuum and delete with posting list updates, page deletion, new roots, metapage
//!   writes; REUSE_PAGE changes no page);
//! - Sequence: LOG;
//! - for these record types, a block whose image is marked BKPIMAGE_APPLY is restored
//!   from the image instead of redone, as XLogReadBufferForRedo does;
//! - the visibility map clears heap records make without a block reference
//!   ([`vm::implicit_vm_clears`]).
//!
//! Anything else is [`redo::RedoError::Unsupported`], images or not. Redo depends on
//! `tarn-wal` only for the decoded record types.
//!
//! [`store`] is the versioned page store: every page's history as images and deltas in
//! layer files, readable at any LSN; its values are opaque (redo happens above it).
//! [`basebackup`] writes a data directory as of any LSN from it, which vanilla
//! Postgres boots without replay.

pub mod basebackup;
pub mod btree;
pub mod heap_tuple;
pub mod ingest;
pub mod mask;
pub mod page;
pub mod reconstruct;
pub mod redo;
pub mod service;
pub mod store;
pub mod vm;

pub use page::{BLCKSZ, ItemId, Page, PageError};
pub use redo::{
    PageTag, RedoError, RedoScratch, RedoSettings, apply_record, apply_record_ref,
    apply_record_with,
};
