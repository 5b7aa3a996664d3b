//! Hand-built decoded records for redo unit tests: one builder, so every test file
//! makes block references and records the same way.

use bytes::Bytes;
use tarn_wal::Lsn;
use tarn_wal::decode::{BlockRef, DecodedRecord, ForkNumber, RelFileNode};

/// A main-fork block reference of `rel` with per-block `data` and no image.
pub(crate) fn block_ref(
    rel: RelFileNode,
    block_id: u8,
    block: u32,
    will_init: bool,
    data: Vec<u8>,
) -> BlockRef {
    BlockRef {
        block_id,
        rel,
        fork: ForkNumber::Main,
        block,
        will_init,
        image: None,
        data: Bytes::from(data),
    }
}

/// A record spanning `lsn..end_lsn` (its xl_prev just below), written by `xid`.
pub(crate) struct RecordAt {
    pub lsn: Lsn,
    pub end_lsn: Lsn,
    pub xid: u32,
}

impl RecordAt {
    pub(crate) fn record(
        &self,
        rmid: u8,
        info: u8,
        blocks: Vec<BlockRef>,
        main_data: Vec<u8>,
    ) -> DecodedRecord {
        DecodedRecord {
            lsn: self.lsn,
            end_lsn: self.end_lsn,
            xid: self.xid,
            prev: Lsn(self.lsn.0 - 0x100),
            info,
            rmid,
            total_len: 0,
            blocks: blocks.into_iter().collect(),
            main_data: Bytes::from(main_data),
            origin: None,
            toplevel_xid: None,
        }
    }
}
