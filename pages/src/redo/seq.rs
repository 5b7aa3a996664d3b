//! Redo of the Sequence rmgr (seq_redo in commands/sequence.c). Its one record type,
//! XLOG_SEQ_LOG, carries the sequence's whole tuple: redo re-initialises the page
//! with the sequence magic as special space and puts the tuple back as item 1.

use super::{BlockRedo, PageFault, ReadMode, RedoError};
use crate::page::{AddItemFlags, FIRST_OFFSET_NUMBER, Page};

/// XLOG_SEQ_LOG (sequence.h).
pub const XLOG_SEQ_LOG: u8 = 0x00;
/// SEQ_MAGIC: sequence_magic, the special space of a sequence page.
pub const SEQ_MAGIC: u32 = 0x1717;
/// sizeof(sequence_magic).
const SIZE_OF_SEQUENCE_MAGIC: usize = 4;
/// sizeof(xl_seq_rec): the sequence's RelFileNode; the tuple follows.
const SIZE_OF_XL_SEQ_REC: usize = 12;

pub(crate) fn is_supported(rmgr_info: u8) -> bool {
    rmgr_info == XLOG_SEQ_LOG
}

// mirrors seq_redo (sequence.c)
pub(crate) fn redo(redo: &BlockRedo<'_>, page: &mut Page) -> Result<(), RedoError> {
    if redo.rmgr_info() != XLOG_SEQ_LOG {
        return Err(redo.malformed(format!(
            "seq_redo: unknown op code {:#04x}",
            redo.rmgr_info()
        )));
    }
    if redo.block.block_id != 0 {
        return Err(redo.malformed("Sequence/LOG changes only block 0"));
    }
    let tuple = redo
        .record
        .main_data
        .get(SIZE_OF_XL_SEQ_REC..)
        .ok_or_else(|| {
            redo.malformed(format!(
                "main data of {} bytes has no xl_seq_rec",
                redo.record.main_data.len()
            ))
        })?;
    redo.read_buffer_for_redo(page, ReadMode::ZeroAndLock)?;
    // Postgres builds the page in local memory and copies it over whole; PageInit
    // zeroes every byte first, so building it in place leaves the same bytes.
    page.init(SIZE_OF_SEQUENCE_MAGIC);
    page.special_space_mut()
        .map_err(|error| redo.fault(error))?[..SIZE_OF_SEQUENCE_MAGIC]
        .copy_from_slice(&SEQ_MAGIC.to_le_bytes());
    page.add_item_extended(tuple, FIRST_OFFSET_NUMBER, AddItemFlags::default())
        .map_err(|source| {
            redo.fault(PageFault::AddTuple {
                offnum: FIRST_OFFSET_NUMBER,
                source,
            })
        })?;
    page.set_lsn(redo.end_lsn());
    Ok(())
}
