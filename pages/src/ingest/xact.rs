//! The transaction-status SLRUs and the records that write them: commit and abort
//! (CLOG bits of the whole transaction tree, dropped relations, prepared transactions'
//! state files), CLOG ZEROPAGE, and multixact creation (offsets and members pages).
//! Each mirrors its redo routine in xact.c, clog.c and multixact.c.

use std::collections::BTreeMap;

use tarn_wal::decode::DecodedRecord;

use super::records::*;
use super::slru::{
    FIRST_MULTIXACT_ID, clog_page, member_page, multi_precedes, multixact_offset_position,
    segment_and_page, xid_precedes,
};
use super::{
    Batch, DeltaRecord, IngestError, Ingester, MemberWrite, TRANSACTION_STATUS_ABORTED,
    TRANSACTION_STATUS_COMMITTED, inconsistent, unsupported,
};
use crate::store::{Key, SlruKind, TimelineStore};

impl Ingester {
    // ---- transactions ------------------------------------------------------------

    pub(super) fn xact(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        let parse = |source| IngestError::Parse {
            lsn: record.lsn,
            source,
        };
        let op = record.info & XLOG_XACT_OPMASK;
        match op {
            XLOG_XACT_COMMIT
            | XLOG_XACT_ABORT
            | XLOG_XACT_COMMIT_PREPARED
            | XLOG_XACT_ABORT_PREPARED => {
                let is_commit = matches!(op, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
                let prepared = matches!(op, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED);
                let parsed = parse_xact_completion(record, is_commit).map_err(parse)?;
                let xid = if prepared {
                    parsed.twophase_xid.ok_or_else(|| {
                        inconsistent(record, "a *_PREPARED record without its transaction id")
                    })?
                } else {
                    record.xid
                };
                if xid == 0 {
                    return Err(inconsistent(record, "completion of InvalidTransactionId"));
                }
                self.set_clog_status(
                    store,
                    batch,
                    xid,
                    &parsed.subxacts,
                    if is_commit {
                        TRANSACTION_STATUS_COMMITTED
                    } else {
                        TRANSACTION_STATUS_ABORTED
                    },
                );
                // TransactionIdLatest, then AdvanceNextFullTransactionIdPastXid.
                let latest = parsed.subxacts.iter().fold(xid, |latest, &sub| {
                    if xid_precedes(latest, sub) {
                        sub
                    } else {
                        latest
                    }
                });
                self.advance_next_xid(store, latest)?;
                // DropRelationFiles.
                for rel in &parsed.dropped_rels {
                    self.drop_relation(store, *rel)?;
                }
                if prepared {
                    // PrepareRedoRemove: the state file goes away.
                    let dir = self.twophase_dir_mut(store)?;
                    dir.0.remove(&xid);
                    self.dirty_twophase_dir = true;
                }
            }
            XLOG_XACT_PREPARE => {
                let xid = parse_prepare_xid(record).map_err(parse)?;
                if xid == 0 {
                    return Err(inconsistent(record, "prepare of InvalidTransactionId"));
                }
                // The record's data is the state file's contents (without its CRC).
                batch
                    .images
                    .insert(Key::twophase_file(xid), record.main_data.clone());
                let dir = self.twophase_dir_mut(store)?;
                dir.0.insert(xid);
                self.dirty_twophase_dir = true;
            }
            _ => return Err(unsupported(record, "unknown transaction record")),
        }
        Ok(())
    }

    /// TransactionIdSetTreeStatus's end state: every xid of the tree has `status`.
    pub(super) fn set_clog_status(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        xid: u32,
        subxacts: &[u32],
        status: u8,
    ) {
        let mut by_page: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for &one in std::iter::once(&xid).chain(subxacts) {
            by_page.entry(clog_page(one)).or_default().push(one);
        }
        for (pageno, xids) in by_page {
            let (segno, blk) = segment_and_page(pageno);
            // In recovery, SimpleLruReadPage reads a missing page as zeros; writing it
            // makes it exist.
            self.touch_slru_page(store, SlruKind::Clog, pageno);
            batch.push(
                Key::slru_page(SlruKind::Clog, segno, blk),
                DeltaRecord::ClogSetStatus { status, xids },
                false,
            );
            self.stats.clog_updates += 1;
            self.stats.synthesized_deltas += 1;
        }
    }

    // ---- CLOG ------------------------------------------------------------------------

    pub(super) fn clog(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        match record.rmgr_info() {
            CLOG_ZEROPAGE => {
                let pageno = parse_pageno(record).map_err(|source| IngestError::Parse {
                    lsn: record.lsn,
                    source,
                })?;
                self.zero_slru_page(store, batch, SlruKind::Clog, pageno);
                Ok(())
            }
            CLOG_TRUNCATE => Err(unsupported(
                record,
                "CLOG truncation (removing pg_xact segments) is not implemented yet",
            )),
            _ => Err(unsupported(record, "unknown CLOG record")),
        }
    }

    /// SimpleLruZeroPage + SimpleLruWritePage: the page exists and is zeros.
    pub(super) fn zero_slru_page(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        slru: SlruKind,
        pageno: u32,
    ) {
        let (segno, blk) = segment_and_page(pageno);
        self.touch_slru_page(store, slru, pageno);
        batch.push(
            Key::slru_page(slru, segno, blk),
            DeltaRecord::ZeroPage,
            true,
        );
        self.stats.synthesized_deltas += 1;
    }

    /// Makes page `pageno` part of its segment (creating the segment if needed), as
    /// writing it to the segment file does. Errors loading the state are deferred:
    /// a missing value reads as "no segment".
    pub(super) fn touch_slru_page(&mut self, store: &TimelineStore, slru: SlruKind, pageno: u32) {
        let (segno, blk) = segment_and_page(pageno);
        let size = self.slru_size(store, slru, segno);
        if size.is_none_or(|size| size <= blk) {
            self.slru_sizes.insert((slru, segno), Some(blk + 1));
            self.dirty_slru_sizes.insert((slru, segno));
        }
        let dir = self.slru_dir_mut(store, slru);
        if dir.0.insert(segno) {
            self.dirty_slru_dirs.insert(slru);
        }
    }

    // ---- multixacts --------------------------------------------------------------------

    pub(super) fn multixact(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        record: &DecodedRecord,
    ) -> Result<(), IngestError> {
        let parse = |source| IngestError::Parse {
            lsn: record.lsn,
            source,
        };
        match record.rmgr_info() {
            XLOG_MULTIXACT_ZERO_OFF_PAGE => {
                let pageno = parse_pageno(record).map_err(parse)?;
                // Skipped if RecordNewMultiXact already initialised it.
                if self.multixact.pre_initialized_offsets_page != Some(pageno) {
                    self.zero_slru_page(store, batch, SlruKind::MultiXactOffsets, pageno);
                    self.multixact.last_initialized_offsets_page = Some(pageno);
                }
                self.multixact.pre_initialized_offsets_page = None;
            }
            XLOG_MULTIXACT_ZERO_MEM_PAGE => {
                let pageno = parse_pageno(record).map_err(parse)?;
                self.zero_slru_page(store, batch, SlruKind::MultiXactMembers, pageno);
            }
            XLOG_MULTIXACT_CREATE_ID => {
                let create = parse_multixact_create(record).map_err(parse)?;
                self.multixact.pre_initialized_offsets_page = None;
                self.record_new_multixact(store, batch, &create);
                // MultiXactAdvanceNextMXact(mid + 1, moff + nmembers).
                let state = self.checkpoint_mut(store)?;
                let next_multi = create.mid.wrapping_add(1);
                if multi_precedes(state.next_multi(), next_multi) {
                    state.set_next_multi(next_multi);
                }
                let next_offset = create.moff.wrapping_add(create.members.len() as u32);
                if multi_precedes(state.next_multi_offset(), next_offset) {
                    state.set_next_multi_offset(next_offset);
                }
                self.dirty_checkpoint = true;
                let latest = create.members.iter().fold(record.xid, |latest, &(xid, _)| {
                    if xid_precedes(latest, xid) {
                        xid
                    } else {
                        latest
                    }
                });
                self.advance_next_xid(store, latest)?;
                self.stats.multixacts += 1;
            }
            XLOG_MULTIXACT_TRUNCATE_ID => {
                return Err(unsupported(
                    record,
                    "multixact truncation (removing pg_multixact segments) is not implemented yet",
                ));
            }
            _ => return Err(unsupported(record, "unknown multixact record")),
        }
        Ok(())
    }

    /// Mirrors RecordNewMultiXact (multixact.c, 15.18): the multixact's offset and the
    /// next one's (skipping offset 0), the next offsets page initialised if an older
    /// primary did not log it, and each member's xid and status.
    pub(super) fn record_new_multixact(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        create: &MultiXactCreate,
    ) {
        let (pageno, entry) = multixact_offset_position(create.mid);
        let mut next = create.mid.wrapping_add(1);
        if next < FIRST_MULTIXACT_ID {
            next = FIRST_MULTIXACT_ID;
        }
        let (next_pageno, next_entry) = multixact_offset_position(next);
        if next_pageno != pageno {
            let init_needed = match self.multixact.last_initialized_offsets_page {
                Some(last) => last == pageno,
                None => !self.slru_page_exists(store, SlruKind::MultiXactOffsets, next_pageno),
            };
            if init_needed {
                self.zero_slru_page(store, batch, SlruKind::MultiXactOffsets, next_pageno);
                self.multixact.pre_initialized_offsets_page = Some(next_pageno);
                self.multixact.last_initialized_offsets_page = Some(next_pageno);
            }
        }
        let mut next_offset = create.moff.wrapping_add(create.members.len() as u32);
        if next_offset == 0 {
            next_offset = 1;
        }
        let mut offsets: BTreeMap<u32, Vec<(u16, u32)>> = BTreeMap::new();
        offsets
            .entry(pageno)
            .or_default()
            .push((entry, create.moff));
        offsets
            .entry(next_pageno)
            .or_default()
            .push((next_entry, next_offset));
        for (page, entries) in offsets {
            let (segno, blk) = segment_and_page(page);
            self.touch_slru_page(store, SlruKind::MultiXactOffsets, page);
            batch.push(
                Key::slru_page(SlruKind::MultiXactOffsets, segno, blk),
                DeltaRecord::MultiXactOffsets { entries },
                false,
            );
            self.stats.synthesized_deltas += 1;
        }
        let mut members: BTreeMap<u32, Vec<MemberWrite>> = BTreeMap::new();
        for (i, &(xid, status)) in create.members.iter().enumerate() {
            let offset = create.moff.wrapping_add(i as u32);
            members
                .entry(member_page(offset))
                .or_default()
                .push(MemberWrite {
                    offset,
                    xid,
                    status: status as u8,
                });
        }
        for (page, writes) in members {
            let (segno, blk) = segment_and_page(page);
            self.touch_slru_page(store, SlruKind::MultiXactMembers, page);
            batch.push(
                Key::slru_page(SlruKind::MultiXactMembers, segno, blk),
                DeltaRecord::MultiXactMembers { members: writes },
                false,
            );
            self.stats.synthesized_deltas += 1;
        }
    }

    pub(super) fn slru_page_exists(
        &mut self,
        store: &TimelineStore,
        slru: SlruKind,
        pageno: u32,
    ) -> bool {
        let (segno, blk) = segment_and_page(pageno);
        self.slru_size(store, slru, segno)
            .is_some_and(|size| blk < size)
    }
}
