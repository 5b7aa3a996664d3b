//! The transaction-status SLRUs and the records that write them: commit and abort
//! (CLOG bits of the whole transaction tree, dropped relations, prepared transactions'
//! state files), CLOG ZEROPAGE and TRUNCATE, multixact creation (offsets and members
//! pages) and truncation. Each mirrors its redo routine in xact.c, clog.c and
//! multixact.c.
//!
//! **Truncation** removes whole segments, as the files' unlink does: the segment leaves
//! the SLRU's directory and its size key becomes
//! [`SizeValue::Dropped`](super::SizeValue::Dropped) at the record's LSN, so reads at
//! or after it find no segment while older reads still do. The pages' versions stay
//! (the store has no tombstones); a segment created again later (the SLRU's page
//! numbers wrap around) starts from zero pages.

use std::collections::BTreeMap;

use tarn_wal::decode::DecodedRecord;

use super::records::*;
use super::slru::{
    FIRST_MULTIXACT_ID, SLRU_PAGES_PER_SEGMENT, clog_page, clog_page_precedes, member_page,
    member_segment_truncated, multi_precedes, multixact_offset_page_precedes,
    multixact_offset_position, previous_multixact_id, segment_and_page, slru_may_delete_segment,
    xid_precedes,
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
            self.touch_slru_page(store, batch, SlruKind::Clog, pageno);
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
        let parse = |source| IngestError::Parse {
            lsn: record.lsn,
            source,
        };
        match record.rmgr_info() {
            CLOG_ZEROPAGE => {
                let pageno = parse_pageno(record).map_err(parse)?;
                self.zero_slru_page(store, batch, SlruKind::Clog, pageno);
                Ok(())
            }
            CLOG_TRUNCATE => {
                let truncate = parse_clog_truncate(record).map_err(parse)?;
                // clog_redo first calls AdvanceOldestClogXid(oldestXact), which moves
                // only ShmemVariableCache->oldestClogXid: no checkpoint or file holds it
                // (a server starting up sets it from checkPoint.oldestXid). Nor does
                // this record move oldestXid: the primary's SetTransactionIdLimit after
                // it is not logged, and redo learns the new oldestXid from the next
                // checkpoint record, as the checkpoint state here does. So the segments
                // are all that changes.
                self.simple_lru_truncate(
                    store,
                    record,
                    SlruKind::Clog,
                    truncate.pageno,
                    clog_page_precedes,
                )?;
                self.stats.slru_truncations += 1;
                Ok(())
            }
            _ => Err(unsupported(record, "unknown CLOG record")),
        }
    }

    /// Mirrors SimpleLruTruncate (slru.c) as redo runs it: if the SLRU's latest page
    /// precedes the cutoff, Postgres logs "apparent wraparound" and removes nothing;
    /// otherwise every segment SlruMayDeleteSegment allows goes (the scan of the
    /// directory is a scan of the SLRU's directory value).
    fn simple_lru_truncate(
        &mut self,
        store: &TimelineStore,
        record: &DecodedRecord,
        slru: SlruKind,
        cutoff_page: u32,
        page_precedes: fn(u32, u32) -> bool,
    ) -> Result<(), IngestError> {
        let latest = self.latest_slru_page(store, slru)?;
        if page_precedes(latest, cutoff_page) {
            tracing::warn!(
                lsn = %record.lsn,
                latest,
                cutoff_page,
                "could not truncate directory \"{}\": apparent wraparound",
                slru.dir_name()
            );
            self.stats.slru_truncations_refused += 1;
            return Ok(());
        }
        let doomed: Vec<u32> = self
            .slru_dir_mut(store, slru)
            .0
            .iter()
            .copied()
            .filter(|segno| {
                slru_may_delete_segment(
                    page_precedes,
                    segno.wrapping_mul(SLRU_PAGES_PER_SEGMENT),
                    cutoff_page,
                )
            })
            .collect();
        for segno in doomed {
            self.remove_slru_segment(store, slru, segno);
        }
        Ok(())
    }

    /// The SLRU's `latest_page_number` as redo has it: the page the last
    /// SimpleLruZeroPage zeroed, or, before any since this ingester started, what
    /// StartupCLOG / StartupMultiXact derive from the counters (as a Postgres started at
    /// this LSN would).
    fn latest_slru_page(
        &mut self,
        store: &TimelineStore,
        slru: SlruKind,
    ) -> Result<u32, IngestError> {
        if let Some(page) = self.slru_latest_pages.get(&slru) {
            return Ok(*page);
        }
        let state = self.checkpoint_mut(store)?;
        Ok(match slru {
            SlruKind::Clog => clog_page(state.next_full_xid() as u32),
            SlruKind::MultiXactOffsets => multixact_offset_position(state.next_multi()).0,
            SlruKind::MultiXactMembers => member_page(state.next_multi_offset()),
        })
    }

    /// Unlinks segment `segno`: out of the directory, its size dropped.
    fn remove_slru_segment(&mut self, store: &TimelineStore, slru: SlruKind, segno: u32) {
        if !self.slru_dir_mut(store, slru).0.remove(&segno) {
            return;
        }
        self.dirty_slru_dirs.insert(slru);
        self.slru_sizes.insert((slru, segno), None);
        self.dirty_slru_sizes.insert((slru, segno));
        for blk in 0..SLRU_PAGES_PER_SEGMENT {
            // Its pages start over from zeros if the segment comes back.
            let key = Key::slru_page(slru, segno, blk);
            self.chains.remove(&key);
            self.image_requests.remove(&key);
        }
        self.stats.slru_segments_removed += 1;
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
        self.touch_slru_page(store, batch, slru, pageno);
        batch.push(
            Key::slru_page(slru, segno, blk),
            DeltaRecord::ZeroPage,
            true,
        );
        // SimpleLruZeroPage: "Assume this page is now the latest active page".
        self.slru_latest_pages.insert(slru, pageno);
        self.stats.synthesized_deltas += 1;
    }

    /// Makes page `pageno` part of its segment (creating the segment if needed), as
    /// writing it to the segment file does. Pages that join the segment start as zero
    /// pages (what a hole in the file reads as; in recovery, also a page of a missing
    /// file): a segment removed by a truncation left its pages' versions behind. The
    /// change the caller pushes next applies on top of (or replaces) the zero page.
    /// Errors loading the state are deferred: a missing value reads as "no segment".
    pub(super) fn touch_slru_page(
        &mut self,
        store: &TimelineStore,
        batch: &mut Batch,
        slru: SlruKind,
        pageno: u32,
    ) {
        let (segno, blk) = segment_and_page(pageno);
        let size = self.slru_size(store, slru, segno).unwrap_or(0);
        if size <= blk {
            for fill in size..=blk {
                batch.push(
                    Key::slru_page(slru, segno, fill),
                    DeltaRecord::ZeroPage,
                    true,
                );
                if fill < blk {
                    self.stats.zero_pages_for_extension += 1;
                }
            }
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
                let truncate = parse_multixact_truncate(record).map_err(parse)?;
                // SetMultiXactIdLimit(endTruncOff, oldestMultiDB), unconditionally. The
                // primary set the same before logging the record (TruncateMultiXact), so
                // it is the oldestMulti its next checkpoint writes, and the one a standby
                // promoted here would write: the checkpoint state (and a basebackup's
                // pg_control) follows the record.
                let state = self.checkpoint_mut(store)?;
                state.set_oldest_multi(truncate.end_off);
                state.set_oldest_multi_db(truncate.oldest_multi_db);
                self.dirty_checkpoint = true;
                // PerformMembersTruncation: members segments [start, end), wrapping
                // from the last segment to 0.
                let members: Vec<u32> = self
                    .slru_dir_mut(store, SlruKind::MultiXactMembers)
                    .0
                    .iter()
                    .copied()
                    .filter(|segno| {
                        member_segment_truncated(*segno, truncate.start_memb, truncate.end_memb)
                    })
                    .collect();
                for segno in members {
                    self.remove_slru_segment(store, SlruKind::MultiXactMembers, segno);
                }
                // PerformOffsetsTruncation: one multixact back, so that the cutoff page
                // exists even when endTruncOff is the first of a page not yet created.
                let (cutoff_page, _) =
                    multixact_offset_position(previous_multixact_id(truncate.end_off));
                self.simple_lru_truncate(
                    store,
                    record,
                    SlruKind::MultiXactOffsets,
                    cutoff_page,
                    multixact_offset_page_precedes,
                )?;
                self.stats.slru_truncations += 1;
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
            self.touch_slru_page(store, batch, SlruKind::MultiXactOffsets, page);
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
            self.touch_slru_page(store, batch, SlruKind::MultiXactMembers, page);
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
