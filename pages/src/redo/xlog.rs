//! Redo of the XLOG rmgr's page records: XLOG_FPI and XLOG_FPI_FOR_HINT, which carry
//! nothing but full-page images. Mirrors the FPI branch of xlog_redo (xlog.c).

use super::{BlockRedo, BufferAction, RedoError};
use crate::page::Page;

/// XLOG_FPI_FOR_HINT (pg_control.h): a page image logged for a hint-bit change.
pub(crate) const XLOG_FPI_FOR_HINT: u8 = 0xA0;
/// XLOG_FPI: a page image (log_newpage).
pub(crate) const XLOG_FPI: u8 = 0xB0;

pub(crate) fn redo(redo: &BlockRedo<'_>, page: &mut Page) -> Result<(), RedoError> {
    let info = redo.rmgr_info();
    if info != XLOG_FPI && info != XLOG_FPI_FOR_HINT {
        return Err(redo.unsupported());
    }
    // mirrors the XLOG_FPI / XLOG_FPI_FOR_HINT branch of xlog_redo (xlog.c)
    let Some(image) = &redo.block.image else {
        if info == XLOG_FPI {
            return Err(redo.malformed("XLOG_FPI record did not contain a full-page image"));
        }
        // An FPI_FOR_HINT written with full_page_writes off: nothing to do.
        return Ok(());
    };
    if !image.apply {
        // XLogReadBufferForRedo would not restore it and xlog_redo errors out.
        return Err(redo.malformed(format!(
            "the image of block {} is not marked BKPIMAGE_APPLY",
            redo.block.block_id
        )));
    }
    match redo.read_for_redo(page)? {
        BufferAction::Restored => Ok(()),
        action => Err(redo.malformed(format!(
            "unexpected XLogReadBufferForRedo result {action:?} when restoring backup block"
        ))),
    }
}
